"""The whole ``data_scripts/download.py`` pipeline: download -> verify -> extract -> convert ->
install -> count.

``prepare("mvtec", root)`` leaves ``<root>/<category>/train/good/...`` (MVTec AD layout) and
returns a :class:`dap.data.verify.Report`. Archives are kept in ``<root>/_downloads/`` (pass
``remove_archive=True`` to delete them after a successful install) so a later run re-verifies
instead of downloading again. See :mod:`dap.data.fetch` for the safety guarantees.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from dap.data.convert import convert_dagm, convert_visa
from dap.data.fetch import (SOURCES, ZENODO_API, check_name, check_url, download, install_tree,
                            is_archive, marker_path, pending_path, safe_extract,
                            undo_interrupted_install, verify_file, write_marker, zenodo_files)
from dap.data.verify import Report, verify_dataset, verify_dtd
from dap.io import clean_stale, make_temp_dir

DOWNLOADS = "_downloads"


def _verify(name: str, root: Path) -> Report:
    return verify_dtd(root) if name == "dtd" else verify_dataset(name, root)


def _archives_to_fetch(name: str, url: str | None, sha256: str | None, md5: str | None,
                       timeout: float) -> list[dict]:
    """``[{"url", "archive", "sha256", "md5", "pinned"}]`` for one dataset.

    Every archive name is one safe file name and every address http(s) (:func:`check_name`,
    :func:`check_url`), checked here, before anything is downloaded or written.
    """
    src = SOURCES[name]
    user_sum = sha256 is not None or md5 is not None
    if name == "dagm" and (url is None or not is_archive(urllib_path(url))):
        api = url or ZENODO_API.format(record=src.zenodo_record)
        files = zenodo_files(api, timeout=timeout)
        if user_sum and len(files) != 1:
            raise ValueError(f"the Zenodo record lists {len(files)} files; --sha256/--md5 can "
                             "pin only one: pass --url with the archive's own address")
        plan = [{"url": f["url"], "archive": f["key"],
                 "sha256": sha256, "md5": md5 if user_sum else f["md5"],
                 "pinned": user_sum} for f in files]
    else:
        archive = src.archive or Path(urllib_path(url or "")).name
        if not archive:
            raise ValueError(f"no archive name for {name}; pass --url ending in the archive name")
        if user_sum:
            plan = [{"url": url or src.url, "archive": archive, "sha256": sha256, "md5": md5,
                     "pinned": True}]
        else:
            plan = [{"url": url or src.url, "archive": archive, "sha256": src.sha256,
                     "md5": src.md5, "pinned": src.sha256 is not None or src.md5 is not None}]
    for item in plan:
        check_name(item["archive"], "archive name")
        check_url(item["url"], f"address of {item['archive']!r}")
    return plan


def urllib_path(url: str) -> str:
    """The path part of a URL (``...?download=1`` stripped)."""
    from urllib.parse import urlparse

    return urlparse(url).path


def _advice(root: Path, name: str, record: Path, entries: list[str], archives: list[str],
            why: str) -> str:
    """What to do when an installed copy fails its counts (instead of the same command)."""
    src = SOURCES[name]
    shown = ", ".join(entries[:8]) + (" ..." if len(entries) > 8 else "")
    arch = ", ".join(f"{DOWNLOADS}/{a}" for a in archives)
    return (f"{why}. Running download.py again would not change that: to start afresh, delete "
            f"{shown} and {record.name} in {root}"
            + (f" (and {arch}, to download it again)" if arch else "")
            + f", then run: python data_scripts/download.py {name} --root {root}"
            + " (without --url, for the official archive). If the official archive fails the "
            f"same way, the counts dap expects for {src.title} (dap/data/registry.py) are wrong: "
            "please report it")


def _installed(root: Path, record: Path) -> tuple[list[str], list[str]]:
    """The entries of an install record that still exist, and its archive names."""
    try:
        info = json.loads(record.read_text())
    except (OSError, ValueError):
        return [], []
    entries = [e for e in info.get("entries", []) if isinstance(e, str)
               and ((root / e).exists() or (root / e).is_symlink())]
    archives = [a.get("name") for a in info.get("archives", []) if isinstance(a, dict)
                and isinstance(a.get("name"), str)]
    return entries, archives


def prepare(name: str, root: str | os.PathLike, *, url: str | None = None,
            sha256: str | None = None, md5: str | None = None, progress: bool = True,
            retries: int = 3, timeout: float = 60.0, remove_archive: bool = False,
            log: Callable[[str], None] = print) -> Report | None:
    """Fetch dataset ``name`` (``mvtec``, ``visa``, ``mpdd``, ``dagm``, ``dtd``) into ``root``.

    ``url`` replaces the known address (the known checksum still applies unless ``sha256`` or
    ``md5`` is given). MPDD has no direct link: the manual steps are printed and the folder, if
    present, is verified. Returns the verification report (``None`` when there is nothing to
    verify yet).

    The completion marker (:func:`~dap.data.fetch.marker_path`) is written only when the
    counts of the installed tree pass. When they do not, the files stay in place (usable,
    e.g. for a partial mirror), a pending record lists them, nothing is downloaded or
    extracted again on the next run, and the report says what to delete to start afresh
    rather than suggesting the same command. Staging folders of killed runs are removed
    first (:func:`dap.io.clean_stale`).

    Raises
    ------
    UnsafeNameError
        An archive name or address (e.g. from the Zenodo record) is unsafe.
    ChecksumError, CorruptArchiveError, DownloadError, UnsafeArchiveError, InstallBusyError
        See :mod:`dap.data.fetch`.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(SOURCES)}")
    src = SOURCES[name]
    root = Path(root).expanduser().resolve()
    if src.manual:
        log(src.manual.format(root=root))
        if root.is_dir():
            return _verify(name, root)
        return None
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root, f".dap-{name}.staging-*")
    clean_stale(root, f"..dap*{name}*.json.tmp-*")  # atomic writes of marker / journal
    undo_interrupted_install(root, name)
    marker, pending = marker_path(root, name), pending_path(root, name)
    if marker.exists():
        log(f"{src.title} is already installed in {root} ({marker.name}); checking the counts")
        report = _verify(name, root)
        if not report.ok:
            entries, archives = _installed(root, marker)
            report.how_to_get = _advice(root, name, marker, entries, archives,
                                        "files of the installed copy were removed or changed "
                                        "after it was installed")
        return report
    if pending.exists():
        entries, archives = _installed(root, pending)
        if entries:
            report = _verify(name, root)
            if report.ok:  # the counts pass now (files added by hand, registry fixed)
                write_marker(root, name, json.loads(pending.read_text()))
                log(f"{src.title} in {root} is complete now; marked as installed")
                return report
            log(f"an earlier run installed {src.title} in {root} from "
                f"{', '.join(archives) or 'its archive'}, but the counts do not match; not "
                "downloading or extracting it again")
            report.how_to_get = _advice(root, name, pending, entries, archives,
                                        "the installed archive does not hold the images dap "
                                        "expects (not the official version, or incomplete)")
            return report
        pending.unlink()  # its entries were deleted: start afresh
    report = _verify(name, root)
    if report.ok:
        log(f"{src.title} is already complete in {root}; nothing to download")
        return report
    log(f"{src.title} ({src.license}) -> {root}")
    plan = _archives_to_fetch(name, url, sha256, md5, timeout)
    archives = []
    for item in plan:
        if not item["pinned"]:
            log(f"WARNING: dap pins no checksum for {item['archive']}; it is checked against "
                "the server's own checksum, or read in full, only")
        path = download(item["url"], root / DOWNLOADS / item["archive"], sha256=item["sha256"],
                        md5=item["md5"], retries=retries, timeout=timeout, progress=progress)
        digest = verify_file(path) if not item["pinned"] or not item["sha256"] else item["sha256"]
        if not item["pinned"]:
            log(f"sha256 of {path.name}: {digest}  (pass --sha256 {digest} to pin it next time)")
        archives.append((path, digest))
    staging = make_temp_dir(root, f"dap-{name}", "staging")
    info = {"dataset": name, "archives": [{"name": p.name, "sha256": d} for p, d in archives]}
    try:
        raws = []
        for i, (path, _) in enumerate(archives):
            log(f"extracting {path.name}")
            raws.append(safe_extract(path, staging / f"raw{i}", progress=progress))
        if name == "dagm":  # archives inside the archive (one zip per class)
            for inner in sorted(p for r in raws for p in r.rglob("*") if p.is_file()
                                and is_archive(p)):
                safe_extract(inner, inner.with_name(inner.name + ".d"))
        if name == "visa":
            log("converting VisA to the 1-class MVTec layout (split_csv/1cls.csv)")
            tree = staging / "out"
            convert_visa(staging / "raw0", tree, mode="move", progress=progress)
        elif name == "dagm":
            log("converting DAGM 2007 to the MVTec layout")
            tree = staging / "out"
            convert_dagm(staging, tree, mode="move", progress=progress)
        else:
            tree = raws[0]
        entries = install_tree(tree, root, name, info)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = _verify(name, root)
    if not report.ok:
        log(f"WARNING: the counts of {src.title} in {root} do not match (see the report); it is "
            "not marked as installed")
        report.how_to_get = _advice(root, name, pending, entries, [p.name for p, _ in archives],
                                    "the installed archive does not hold the images dap expects "
                                    "(not the official version, or incomplete)")
        return report
    write_marker(root, name, {**info, "entries": entries})
    if remove_archive:
        for path, _ in archives:
            path.unlink(missing_ok=True)
    return report


__all__ = ["prepare", "DOWNLOADS"]
