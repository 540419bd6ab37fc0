"""Crash-safe file writing for all of dap: atomic writes and PID-tagged temporary names.

A reader never sees half a file: everything is written to a temporary sibling of its target
and renamed over it (``os.replace``, atomic on POSIX and Windows) only when complete; on an
exception (or Ctrl-C) the temporary is removed. A process killed outright (SIGKILL, out of
memory, a closed Colab tab) cannot clean up after itself, so every temporary name carries the
PID of the process that created it::

    .<name>.<kind>-<pid>-<token>      e.g.  .last.pt.tmp-4242-1f0c9a7e

and :func:`clean_stale` removes the leftovers whose process is dead on a later run, never
those of a live process. ``<token>`` (8 hex digits) keeps two threads of one process apart.

PIDs are meaningful on one machine only: do not run dap on two machines that share one
output folder at the same time. On Windows ``os.kill(pid, 0)`` would terminate the process,
so there every PID counts as alive and :func:`clean_stale` removes nothing.

Examples
--------
>>> from dap.io import atomic_path, atomic_write_text
>>> atomic_write_text("runs/x/report.md", "# done\\n")              # doctest: +SKIP
>>> with atomic_path("runs/x/last.pt") as tmp:                      # doctest: +SKIP
...     torch.save(state, tmp)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Iterator

__all__ = [
    "tagged_name",
    "tag_pid",
    "pid_alive",
    "make_temp_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_stale",
]

# ".<name>.<kind>-<pid>" optionally followed by "-<8 hex digits>", at the end of a file name
_TAG = re.compile(r"\.[A-Za-z]+-(\d+)(?:-[0-9a-f]{8})?$")


def tagged_name(name: str, kind: str = "tmp") -> str:
    """The hidden, PID-tagged temporary name for a file or folder called ``name``.

    Parameters
    ----------
    name : str
        The final file name (one path component), e.g. ``"last.pt"``.
    kind : str
        A word saying what the temporary is for (letters only): ``"tmp"``, ``"extract"``,
        ``"staging"``...

    Returns
    -------
    str
        ``".<name>.<kind>-<pid>-<token>"``; :func:`clean_stale` recognises it.
    """
    if not kind.isalpha():
        raise ValueError(f"kind must be letters only, got {kind!r}")
    return f".{name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"


def tag_pid(name: str) -> int | None:
    """The PID in a name made by :func:`tagged_name` (or ``.<name>.<kind>-<pid>``), else None."""
    m = _TAG.search(name)
    if m is None or not name.startswith("."):
        return None
    pid = int(m.group(1))
    return pid if pid > 0 else None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (``os.kill(pid, 0)``; signals nothing).

    A process of another user counts as alive (``PermissionError``); so does every PID on
    Windows, where ``os.kill`` cannot probe without terminating.
    """
    if pid <= 0:  # 0 / negative would address process groups
        return True
    if pid == os.getpid() or sys.platform == "win32":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def make_temp_dir(folder: str | os.PathLike, name: str, kind: str = "tmp") -> Path:
    """Create and return the PID-tagged hidden folder ``<folder>/.<name>.<kind>-<pid>-<token>``.

    ``folder`` is created if missing. The caller removes or renames it; after a kill,
    :func:`clean_stale` removes it on a later run.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        path = folder / tagged_name(name, kind)
        try:
            path.mkdir()
            return path
        except FileExistsError:  # a token collision: draw again
            continue


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, kind: str = "tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block succeeds.

    The temporary (``.<name>.<kind>-<pid>-<token>`` in the same folder, so the rename never
    crosses file systems) is not created: the block writes a file there (``torch.save(obj,
    tmp)``, ``Image.save(tmp)``...) or creates a folder. On success it replaces ``path``
    (a folder only replaces a missing ``path``); on any exception, Ctrl-C included, it is
    removed and the exception propagates, so ``path`` is either the old content or the new,
    never half of it.

    Parameters
    ----------
    path : str or os.PathLike
        The final file or folder; its parent folder is created if missing.
    kind : str
        The word in the temporary name (see :func:`tagged_name`).

    Yields
    ------
    pathlib.Path
        The temporary path to write.

    Raises
    ------
    FileNotFoundError
        The block finished without creating the temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(tagged_name(path.name, kind))
    try:
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise FileNotFoundError(f"nothing was written to {tmp} (the temporary for {path})")
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`).

    Parameters
    ----------
    path : str or os.PathLike
        The file to (over)write.
    data : bytes
        Its new content.
    fsync : bool
        Also flush the bytes to the disk before the rename (survives a power cut, slower).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically, encoded as ``encoding`` (UTF-8 by default).

    Parameters
    ----------
    path : str or os.PathLike
        The file to (over)write.
    text : str
        Its new content.
    encoding : str
        The text encoding.
    fsync : bool
        See :func:`atomic_write_bytes`.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


def clean_stale(folder: str | os.PathLike, pattern: str = ".*") -> list[Path]:
    """Remove the PID-tagged leftovers in ``folder`` whose process is dead.

    Only entries that match the glob ``pattern`` *and* carry a PID tag (see
    :func:`tagged_name`) are candidates; a candidate is removed (a folder with its content)
    when ``os.kill(pid, 0)`` says the process no longer exists. Leftovers of live processes,
    of this process, of other users' processes and every untagged name are kept. Errors while
    removing are ignored (a concurrent cleaner may have been faster).

    Parameters
    ----------
    folder : str or os.PathLike
        The folder to look in (not recursively); a missing folder is fine.
    pattern : str
        A glob for the names to consider, e.g. ``".dap-mvtec.staging-*"``.

    Returns
    -------
    list of pathlib.Path
        What was removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in sorted(folder.glob(pattern)):
        pid = tag_pid(p.name)
        if pid is None or pid_alive(pid):
            continue
        _remove(p)
        removed.append(p)
    return removed
