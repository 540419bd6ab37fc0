"""The "official code vs dap" records render into docstrings and tables (dap.methods.official)."""

import importlib

import pytest

from dap.methods.official import Difference, docstring_section, markdown

D = [Difference("grid", "225..0", "250..25", "a choice", "grid='official'"),
     Difference("a|b", "x", "y", "z")]


def test_markdown_and_docstring_render_every_record():
    md = markdown(D)
    assert md.count("\n") == 4 and "| grid | 225..0 | 250..25 | a choice | `grid='official'` |" in md
    assert "a\\|b" in md and "| — |" in md
    doc = docstring_section(D)
    assert "**grid.** Official: 225..0 dap: 250..25 Why: a choice Option: ``grid='official'``." \
        in doc


@pytest.mark.parametrize("name", ["diffusionad", "ddad", "glad", "diffad"])
def test_each_related_method_documents_its_differences(name):
    pkg = importlib.import_module(f"dap.methods.{name}")
    official = importlib.import_module(f"dap.methods.{name}.official")
    assert official.DIFFERENCES, f"dap.methods.{name}.official lists no differences"
    assert docstring_section(official.DIFFERENCES) in pkg.__doc__
