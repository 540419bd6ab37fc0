"""The package's layering (drawn in ``dap/__init__.py``), checked on the source's imports.

* every module imports only from its own layer or the layers below it;
* data never imports methods; metrics never imports methods or models; diffusion never imports
  models or data; methods never read files;
* no module imports another module's private (``_name``) names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DAP = Path(__file__).resolve().parents[1] / "dap"

# the layer of each top-level part of dap (higher may import lower, never the reverse)
LAYER = {
    "config": 0, "profiles": 0, "io": 0, "progress": 0, "viz": 0,
    "data": 1, "metrics": 1, "_metrics_core": 1,
    "diffusion": 2, "models": 2, "features": 2, "synthesis": 2, "losses": 2,
    "methods": 3, "runtime": 3,
    "engine": 4, "report": 4, "copy_metrics": 4,
    "experiments": 5, "zoo": 5, "analysis": 5,
    "cli": 6, "__main__": 6, "__init__": 6,
    "__version__": 0,   # `from dap import __version__`
}
# imports that the layer order would allow but the design forbids
FORBIDDEN = {
    "data": {"methods", "models", "diffusion", "synthesis", "engine"},
    "metrics": {"methods", "models"},
    "_metrics_core": {"methods", "models"},
    "diffusion": {"models", "data"},
}
READS_FILES = ("open", "load", "read_text", "read_bytes", "imread", "listdir", "glob", "iterdir")


def _modules():
    for path in sorted(DAP.rglob("*.py")):
        rel = path.relative_to(DAP)
        yield path, rel.parts[0].removesuffix(".py")


def _imports(path: Path):
    """(imported top-level dap part, module, names) of every dap import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dap"):
            parts = node.module.split(".")
            if len(parts) > 1:
                yield parts[1], node.module, [a.name for a in node.names]
            else:
                for a in node.names:
                    yield a.name, f"dap.{a.name}", []
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "dap" and len(parts) > 1:
                    yield parts[1], a.name, []


def test_every_part_has_a_layer():
    missing = {part for _, part in _modules()} - set(LAYER)
    assert not missing, f"add {sorted(missing)} to LAYER (and to the diagram in dap/__init__.py)"


@pytest.mark.parametrize("path,part", list(_modules()), ids=lambda v: str(v))
def test_imports_follow_the_layers(path, part):
    for target, module, _ in _imports(path):
        if target == part:
            continue
        assert target in LAYER, f"{path}: imports unknown part {module}"
        assert LAYER[target] <= LAYER[part], (
            f"{path.relative_to(DAP)} ({part}, layer {LAYER[part]}) imports {module} "
            f"(layer {LAYER[target]}): against the layering")
        assert target not in FORBIDDEN.get(part, set()), (
            f"{path.relative_to(DAP)}: {part} must never import {target} ({module})")


def test_no_module_imports_private_names_of_another():
    bad = []
    for path, _ in _modules():
        me = ".".join(("dap", *path.relative_to(DAP).with_suffix("").parts))
        for _, module, names in _imports(path):
            if module == me:
                continue
            # a package's private helper module (dap.synthesis._random) is its own business
            package = me.rsplit(".", 1)[0]
            private_module = module.rsplit(".", 1)[-1].startswith("_")
            if private_module and module.rsplit(".", 1)[0] == package:
                continue
            bad += [f"{path.relative_to(DAP)}: {module}.{n}" for n in names
                    if n.startswith("_") and not n.startswith("__")
                    and not f"{module}.{n}".startswith(package + "._")]
    assert not bad, "private names imported across modules: " + ", ".join(bad)


def test_methods_never_read_files():
    bad = []
    for path in (DAP / "methods").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name in READS_FILES:
                    bad.append(f"{path.relative_to(DAP)}:{node.lineno} {name}()")
    assert not bad, "methods must not read files: " + ", ".join(bad)


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The layering check can fail: a data module importing a method is caught."""
    fake = tmp_path / "dap" / "data"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from dap.methods import build_method\n")
    found = list(_imports(fake / "bad.py"))
    assert found == [("methods", "dap.methods", ["build_method"])]
    assert "methods" in FORBIDDEN["data"]


def test_readme_package_map_names_every_part():
    """The README's package map (the block under '## The package') matches the tree."""
    readme = (DAP.parent / "README.md").read_text()
    block = readme.split("## The package", 1)[1].split("```", 2)[1]
    parts = {part for _, part in _modules()} - {"__init__", "__main__", "_metrics_core"}
    missing = sorted(p for p in parts if p not in block and p != "analysis")
    assert not missing, f"README's package map lacks {missing}"
    for method in (DAP / "methods").iterdir():
        if method.is_dir() and (method / "__init__.py").exists():
            assert f"{method.name}/" in block, f"README's package map lacks methods/{method.name}/"
