"""Download, verify and unpack the real benchmarks safely (the logic behind
``data_scripts/download.py``).

Guarantees, each tested against a local HTTP server in ``tests/test_download.py``:

* **Pinned by checksum, not by URL.** Archive URLs rotate (MVTec's share link changed at least
  four times, its sha256 never); :data:`SOURCES` pins each archive's sha256 / md5, and an
  archive already on disk is re-verified before use (anomalib skips that check).
* **Unpinned archives are read in full.** Without a checksum (a DAGM ``--url`` mirror, a
  Zenodo record without one) a server that sends no ``Content-Length`` and closes early would
  otherwise pass for complete: such an archive is checked by reading every member (tar: to the
  end-of-archive marker and the end of the compressed stream; zip: ``testzip``) before it gets
  its name, and again when a later run finds it on disk. A failing one is never reused.
* **Resumable.** Bytes stream into ``<archive>.part`` with a tqdm bar; a dropped connection is
  retried with an HTTP ``Range`` request from the last byte, and a later run resumes a
  ``.part`` left by an interrupted one. The archive name appears only after the checksum
  (or the full read) passed (``os.replace``); a corrupted download is deleted.
* **Names from the network are one safe path component.** A file name from a download record
  (Zenodo's ``key``) or an archive's CSV must be a single component (no ``/`` or ``\\``, not
  ``.`` / ``..``, no NUL or control character, not absolute, at most 255 bytes) and every
  address ``http``/``https`` (redirects included), checked before anything is written
  (:func:`check_name`, :func:`check_url`; :class:`UnsafeNameError`).
* **Safe extraction.** Every member is checked before anything is written: absolute paths,
  ``..`` components, links pointing upward (``..``) or to an absolute target, device files and
  FIFOs are refused. Links may only point sideways or down, so no chain of links can leave the
  target: dap does not rely on tarfile's ``data`` filter (absent on Python 3.10.0-3.10.11 and
  3.11.0-3.11.3), which is still applied where it exists. Extraction goes into a hidden
  temporary folder that is renamed when complete; on any error (or Ctrl-C) it is removed, so
  nothing half-extracted is left behind.
* **Atomic install.** The extracted (and, for VisA / DAGM, converted) tree is moved into the
  dataset root entry by entry under a journal file; a later run undoes an install a kill
  interrupted (never one of a live process). Existing user files are never overwritten.
* **Leftovers of killed runs are removed.** Staging and extraction folders carry the PID of
  their process (:mod:`dap.io`); a later run removes those of dead processes.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import json
import lzma
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dap.io import atomic_path, atomic_write_text, clean_stale, pid_alive
from dap.progress import progress_bar

USER_AGENT = "dap-data-scripts/0.1 (Python urllib)"
CHUNK = 1 << 20
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".zip")


class ChecksumError(ValueError):
    """A file's checksum differs from the pinned one."""


class UnsafeArchiveError(ValueError):
    """An archive member would escape the target folder or is a device / FIFO."""


class DownloadError(OSError):
    """The download failed after its retries (the ``.part`` file is kept for a resume)."""


class UnsafeNameError(UnsafeArchiveError):
    """A file name or address from the network or an archive is not safe to use.

    Raised before anything is written: a name that is not one path component (separators,
    ``.`` / ``..``, NUL, absolute, too long) or an address that is not ``http``/``https``.
    """


class CorruptArchiveError(ChecksumError):
    """An archive without a pinned checksum failed the full read (truncated or damaged)."""


class InstallBusyError(OSError):
    """Another live process is installing the same dataset into the same root."""


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from and how its archive is pinned."""

    name: str
    title: str
    license: str
    url: str | None = None
    archive: str | None = None
    sha256: str | None = None
    md5: str | None = None
    zenodo_record: str | None = None
    manual: str | None = None
    homepage: str = ""


ZENODO_API = "https://zenodo.org/api/records/{record}"

SOURCES: dict[str, Source] = {
    "mvtec": Source(
        name="mvtec", title="MVTec AD", license="CC BY-NC-SA 4.0",
        url="https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/"
            "420938113-1629960298/mvtec_anomaly_detection.tar.xz",
        archive="mvtec_anomaly_detection.tar.xz",
        sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
        homepage="https://www.mvtec.com/company/research/datasets/mvtec-ad"),
    "visa": Source(
        name="visa", title="VisA", license="CC BY 4.0",
        url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",
        archive="VisA_20220922.tar",
        sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
        homepage="https://github.com/amazon-science/spot-diff"),
    "mpdd": Source(
        name="mpdd", title="MPDD", license="unclear (the authors' README states none)",
        homepage="https://github.com/stepanje/MPDD",
        manual=("MPDD has no direct download link. Open https://github.com/stepanje/MPDD, follow "
                "the OneDrive link in its README, download the archive, and unpack it so that "
                "{root}/bracket_black/train/good/ exists (MVTec AD layout, 6 categories: "
                "bracket_black, bracket_brown, bracket_white, connector, metal_plate, tubes). "
                "Then run: python data_scripts/verify.py mpdd --root {root}")),
    "dagm": Source(
        name="dagm", title="DAGM 2007", license="CC BY 4.0 (reported)",
        zenodo_record="12750201", homepage="https://zenodo.org/records/12750201"),
    "dtd": Source(
        name="dtd", title="Describable Textures Dataset (anomaly source)",
        license="research use",
        url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
        archive="dtd-r1.0.1.tar.gz", md5="fff73e5086ae6bdbea199a49dfb8a4c1",
        homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
}


# --------------------------------------------------------------------------------------------
# Names and addresses from the network
# --------------------------------------------------------------------------------------------
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(name: object, what: str = "file name") -> str:
    """``name`` if it is one safe path component, else :class:`UnsafeNameError`.

    Safe: a non-empty string without ``/`` or ``\\``, not ``.`` or ``..``, without NUL or
    other control characters, not absolute nor a Windows drive (``C:...``), at most
    :data:`MAX_NAME_BYTES` bytes in UTF-8. ``what`` says where the name came from (it starts
    the error message, which shows the name with ``repr``).
    """
    why = None
    if not isinstance(name, str) or not name:
        why = "it is empty or not a string"
    elif "\x00" in name:
        why = "it contains a NUL byte"
    elif _CONTROL.search(name):
        why = "it contains a control character"
    elif "/" in name or "\\" in name:
        why = "it contains a path separator"
    elif name in (".", ".."):
        why = "it names a folder ('.' or '..')"
    elif re.match(r"^[A-Za-z]:", name) or os.path.isabs(name):
        why = "it is an absolute path or a drive"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        why = f"it is longer than {MAX_NAME_BYTES} bytes"
    if why is not None:
        raise UnsafeNameError(f"{what} {name!r}: not a single safe file name ({why}); refused "
                              "before anything was written. The source is malformed or not "
                              "the dataset: check the address (--url) you gave")
    return name


def check_url(url: object, what: str = "address") -> str:
    """``url`` if it is an ``http``/``https`` address with a host, else :class:`UnsafeNameError`.

    ``file://``, ``ftp://``, ``data:`` and the like are refused: a download record must not
    make dap read local files or other protocols.
    """
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise UnsafeNameError(f"{what} {url!r}: not an http(s) address; refused (dap downloads "
                              "only over http and https). To use a file you already have, "
                              "put it where the download would go (<root>/_downloads/<name>) "
                              "and run again without this address")
    return url


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib's default also follows ``ftp://``)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl, f"redirect from {req.full_url} to")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """An opener that speaks http and https only (no ``file:`` / ``ftp:`` / ``data:``)."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                    urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _HttpOnlyRedirects(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------
def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, sha256: str | None = None, md5: str | None = None
                ) -> str:
    """Check ``path`` against the given checksums; return its sha256.

    Raises
    ------
    ChecksumError
        If a given checksum differs (the message shows both values).
    """
    got = file_digest(path, "sha256")
    if sha256 is not None and got.lower() != sha256.strip().lower():
        raise ChecksumError(f"{path}: sha256 is {got}, expected {sha256.lower()}")
    if md5 is not None:
        got_md5 = file_digest(path, "md5")
        if got_md5.lower() != md5.strip().lower():
            raise ChecksumError(f"{path}: md5 is {got_md5}, expected {md5.lower()}")
    return got


# --------------------------------------------------------------------------------------------
# Archive integrity without a checksum: a full read
# --------------------------------------------------------------------------------------------
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2")


def _archive_kind(path: Path, name: str | None = None) -> str | None:
    """``"zip"``, ``"tar"`` or ``None``: from the name, else from the first bytes."""
    low = (name or path.name).lower()
    if low.endswith(".zip"):
        return "zip"
    if low.endswith(_TAR_SUFFIXES):
        return "tar"
    try:
        if zipfile.is_zipfile(path):
            return "zip"
        if tarfile.is_tarfile(path):
            return "tar"
    except OSError:
        pass
    return None


class _LastRead:
    """A read-only file wrapper that remembers the bytes of the last ``read`` call."""

    def __init__(self, f) -> None:
        self.f, self.last = f, b""

    def read(self, n: int = -1) -> bytes:
        self.last = self.f.read(n)
        return self.last

    def seek(self, pos: int, whence: int = 0) -> int:
        return self.f.seek(pos, whence)

    def tell(self) -> int:
        return self.f.tell()


def _open_decompressed(path: Path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(path, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(path, "rb")
    return open(path, "rb")


def _read_tar_fully(path: Path) -> int:
    """Read every member of a (compressed) tar, its end marker and its stream's end."""
    n = 0
    with _open_decompressed(path) as raw:
        stream = _LastRead(raw)
        with tarfile.open(fileobj=stream, mode="r:") as tar:  # type: ignore[arg-type]
            for member in tar:
                n += 1
                if member.isreg():
                    f = tar.extractfile(member)
                    while f is not None and f.read(CHUNK):
                        pass
            # tarfile stops quietly at a missing or garbled header: demand the zero block
            if len(stream.last) != tarfile.BLOCKSIZE or stream.last.count(0) != tarfile.BLOCKSIZE:
                raise tarfile.ReadError(f"no end-of-archive marker after member {n}: the "
                                        "archive stops early")
        while stream.read(CHUNK):  # compressed: reach the stream's end marker and checksum
            pass
    return n


def check_archive(path: str | os.PathLike, name: str | None = None) -> None:
    """Read the whole archive at ``path``; raise :class:`CorruptArchiveError` if it is damaged.

    The check for archives dap has no checksum for. A tar (plain, gz, xz, bz2) is read member by
    member, then up to its end-of-archive block and the end of its compressed stream (gzip's
    CRC and length, xz's and bz2's end markers), so a file cut anywhere fails, also exactly
    between two members. A zip must open (its central directory is at the end) and pass
    :meth:`zipfile.ZipFile.testzip` (every member's CRC). ``name`` (the final file name, when
    ``path`` is a ``.part``) decides the kind; otherwise the content does.
    """
    path = Path(path)
    label = name or path.name
    kind = _archive_kind(path, name)
    if kind is None:
        raise CorruptArchiveError(f"{label} is neither a tar nor a zip archive (truncated or "
                                  "corrupt, or not an archive at all)")
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"member {bad!r} fails its CRC check")
        else:
            _read_tar_fully(path)
    except CorruptArchiveError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, lzma.LZMAError, zlib.error,
            ValueError, NotImplementedError) as exc:
        raise CorruptArchiveError(f"{label} is truncated or corrupt ({type(exc).__name__}: "
                                  f"{exc})") from None


# --------------------------------------------------------------------------------------------
# Download with resume
# --------------------------------------------------------------------------------------------
class _Incomplete(Exception):
    pass


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return _opener().open(urllib.request.Request(url, headers=headers), timeout=timeout)


def _unpinned_ok(part: Path, dest: Path, length_ok: bool) -> None:
    """Accept a download without a checksum: archives by a full read, others by their length."""
    if _archive_kind(part, dest.name) is not None or is_archive(dest):
        check_archive(part, dest.name)
    elif not length_ok:
        raise ChecksumError(f"{dest.name} cannot be verified: no checksum was given, the server "
                            "sent no length, and it is not an archive dap could read in full. "
                            "Pass its --sha256 (or --md5)")


def download(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
             md5: str | None = None, retries: int = 3, timeout: float = 60.0,
             progress: bool = True, backoff_s: float = 1.0) -> Path:
    """Download ``url`` to ``dest``, resuming and verifying.

    Only ``http``/``https`` addresses are fetched (redirects included). An existing ``dest``
    is re-verified against the checksums and returned (no network). A ``dest.part`` left by an
    earlier run is resumed with ``Range: bytes=<size>-`` (a server that answers 200 instead of
    206 restarts it from zero). A connection dropped mid-way is retried ``retries`` times from
    where it stopped. After the last byte the ``.part`` is verified and renamed to ``dest``;
    if the checksum fails it is deleted.

    Without ``sha256`` and ``md5`` an archive is read in full (:func:`check_archive`) instead:
    after a response without ``Content-Length`` (so an early close looks like the end), to
    decide whether to resume; before the rename; and when ``dest`` already exists (a damaged
    one is deleted and downloaded again). A file that is not an archive is accepted without a
    checksum only when the server's ``Content-Length`` matched.

    Raises
    ------
    UnsafeNameError
        ``url`` is not ``http``/``https``.
    ChecksumError
        The archive on disk, or the downloaded one, does not match.
    CorruptArchiveError
        Without a checksum: the downloaded archive is truncated or damaged (it was deleted).
    DownloadError
        The network failed ``retries + 1`` times (``dest.part`` is kept for a later resume).
    """
    check_url(url, "download address")
    dest = Path(dest)
    pinned = sha256 is not None or md5 is not None
    if dest.exists():
        if pinned:
            try:
                verify_file(dest, sha256, md5)
            except ChecksumError as exc:
                raise ChecksumError(f"the archive already on disk is damaged or a different "
                                    f"version ({exc}); delete it and run again") from None
            return dest
        if _archive_kind(dest) is not None or is_archive(dest):
            try:
                check_archive(dest)
                return dest
            except CorruptArchiveError:
                pass
        dest.unlink()  # unverifiable or damaged (e.g. truncated by an older dap): never reused
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = 0
    length_ok = False
    while True:
        have = part.stat().st_size if part.exists() else 0
        try:
            with _open(url, have, timeout) as resp:
                mode = "ab"
                if have and resp.status != 206:  # Range ignored: start again
                    have, mode = 0, "wb"
                elif not have:
                    mode = "wb"
                elif resp.status == 206:
                    m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != have:  # a range we did not ask for
                        resp.close()
                        part.unlink()
                        continue
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(part, mode) as f, progress_bar(
                        None, progress, total=total, initial=have, unit="B", unit_scale=True,
                        unit_divisor=1024, desc=dest.name) as bar:
                    while True:
                        chunk = resp.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        bar.update(len(chunk))
                size = part.stat().st_size
                if total is not None and size < total:
                    raise _Incomplete(f"connection closed at {size} of {total} bytes")
                length_ok = total is not None and size == total
                if total is None and not pinned and size > have and (
                        _archive_kind(part, dest.name) is not None or is_archive(dest)):
                    try:  # no length: an early close looks like the end; read it to know
                        check_archive(part, dest.name)
                    except CorruptArchiveError:
                        raise _Incomplete(f"the server sent no length and the archive is "
                                          f"incomplete after {size} bytes") from None
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to send: the .part is complete
                m = re.match(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") or "")
                length_ok = bool(m) and int(m.group(1)) == have
                break
            if exc.code < 500 or failures >= retries:  # 5xx: the server may recover
                raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}"
                                    ) from None
            failures += 1
            time.sleep(backoff_s * failures)
        except (_Incomplete, http.client.IncompleteRead, http.client.RemoteDisconnected,
                ConnectionError, socket.timeout, TimeoutError, urllib.error.URLError) as exc:
            failures += 1
            if failures > retries:
                size = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"download of {url} failed after {retries} retries ({exc}); {size} bytes "
                    f"are kept in {part} and the next run resumes from there") from None
            time.sleep(backoff_s * failures)
    if pinned:
        try:
            verify_file(part, sha256, md5)
        except ChecksumError as exc:
            part.unlink()
            raise ChecksumError(f"the downloaded archive is corrupted or not the pinned version "
                                f"({exc}); it was deleted") from None
    else:
        try:
            _unpinned_ok(part, dest, length_ok)
        except CorruptArchiveError as exc:
            part.unlink()
            raise CorruptArchiveError(
                f"the download of {url} is truncated or corrupt ({exc}); it was deleted. dap has "
                "no checksum for it, so it read the archive in full. Run again; if this "
                "repeats, the server sends a damaged file: use another --url, or pass the "
                "--sha256 of a good copy") from None
        except ChecksumError:
            part.unlink()
            raise
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------
def _safe_name(name: str, archive: Path) -> PurePosixPath:
    """A member name as a relative path that stays inside the target, else an error."""
    raw = name.replace("\\", "/")
    path = PurePosixPath(raw)
    if "\x00" in raw:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains a NUL byte; refused")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or path.is_absolute():
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refused")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; refused")
    return path


def _link_points_down(target: str) -> bool:
    """Whether a link target is relative and has no ``..``: it can only point sideways or down.

    Such links cannot leave the extraction folder, whatever other links they pass through
    (each one resolves at or below its own folder, and the folder is new and empty), so
    no chain of them escapes; that is why dap does not need to resolve links.
    """
    raw = target.replace("\\", "/")
    if not raw or "\x00" in raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        return False
    return ".." not in PurePosixPath(raw).parts


def check_tar_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """Every member of ``tar`` after the safety checks (raises on the first unsafe one).

    Refused: absolute names and names with ``..``; device files, FIFOs and other special
    types; **every symbolic or hard link whose target is absolute or contains ``..``**. dap
    does not resolve links against each other: links may point sideways or down only, which
    no chain of links can turn into an escape (``x/y -> ..``, ``x/y/z -> ..``, then a file
    ``x/y/z/evil`` would leave the target on a Python without tarfile's ``data`` filter). The
    datasets dap knows contain no upward links.
    """
    members = tar.getmembers()
    for m in members:
        _safe_name(m.name, archive)
        if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device file or FIFO; "
                                     "refused")
        if m.issym() and not _link_points_down(m.linkname):
            raise UnsafeArchiveError(f"{archive}: symlink {m.name!r} -> {m.linkname!r} points "
                                     "upward or outside the target folder ('..', an absolute or "
                                     "an empty target); refused. Links may only point sideways "
                                     "or down: the archive is damaged, malicious or not the "
                                     "dataset")
        if m.islnk() and not _link_points_down(m.linkname):
            raise UnsafeArchiveError(f"{archive}: hard link {m.name!r} -> {m.linkname!r} points "
                                     "upward or outside the target folder; refused")
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} has an unsupported type; "
                                     "refused")
    return members


def _strip_permissions(members: list[tarfile.TarInfo]) -> None:
    """What tarfile's ``data`` filter does to modes and owners, for Pythons without it."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    gid = os.getgid() if hasattr(os, "getgid") else 0
    for m in members:
        if m.isdir():
            m.mode = (m.mode & 0o755) | 0o700
        elif m.isfile():
            m.mode = (m.mode & 0o755) | 0o600
        m.uid, m.gid, m.uname, m.gname = uid, gid, "", ""


def check_zip_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    """Every member of ``zf`` after the safety checks (symlinks in zip files are refused)."""
    members = zf.infolist()
    for m in members:
        _safe_name(m.filename, archive)
        kind = (m.external_attr >> 16) & 0o170000
        if kind == 0o120000:
            raise UnsafeArchiveError(f"{archive}: member {m.filename!r} is a symlink; refused")
        if kind in (0o020000, 0o060000, 0o010000, 0o140000):
            raise UnsafeArchiveError(f"{archive}: member {m.filename!r} is a device, FIFO or "
                                     "socket; refused")
    return members


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = False
                 ) -> Path:
    """Extract ``archive`` (tar, tar.gz/xz/bz2 or zip) into the new folder ``dest``, atomically.

    All members are checked first (:func:`check_tar_members`, :func:`check_zip_members`); the
    files go into a hidden folder ``.<dest>.extract-<pid>-<token>`` next to ``dest`` that is
    renamed to ``dest`` when complete and removed on any error or Ctrl-C, so ``dest`` either
    holds the whole archive or does not exist; such folders of killed processes are removed
    first (:func:`dap.io.clean_stale`). Tar members additionally pass the standard library's
    ``"data"`` filter where it exists; where it does not, dap's own checks suffice and modes
    are stripped of setuid/setgid/sticky and group/other write bits.

    Raises
    ------
    UnsafeArchiveError
        An absolute path, a ``..`` member, a link pointing upward, a device file.
    FileExistsError
        ``dest`` already exists.
    ValueError
        The file is neither a tar nor a zip archive.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"extraction target {dest} already exists")
    use_zip = archive.name.lower().endswith(".zip") or (
        not tarfile.is_tarfile(archive) and zipfile.is_zipfile(archive))
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest.parent, f".{dest.name}.extract-*")
    with atomic_path(dest, kind="extract") as tmp:
        tmp.mkdir()
        if use_zip:
            try:
                zf = zipfile.ZipFile(archive)
            except zipfile.BadZipFile as exc:
                raise ValueError(f"{archive} is not a readable zip archive: {exc}") from None
            with zf:
                members = check_zip_members(zf, archive)
                try:
                    zf.extractall(tmp, members=progress_bar(
                        members, progress, desc=f"extract {archive.name}", unit="file"))
                except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                    raise CorruptArchiveError(f"{archive} cannot be extracted, it is truncated "
                                              f"or corrupt ({exc}): delete it and run again"
                                              ) from None
        else:
            try:
                tar = tarfile.open(archive, "r:*")
            except tarfile.TarError as exc:
                raise ValueError(f"{archive} is not a readable tar or zip archive: {exc}") from None
            with tar:
                members = check_tar_members(tar, archive)
                if hasattr(tarfile, "data_filter"):
                    kwargs = {"filter": "data"}
                else:  # Python 3.10.0-3.10.11, 3.11.0-3.11.3
                    kwargs = {}
                    _strip_permissions(members)
                try:
                    tar.extractall(tmp, members=progress_bar(
                        members, progress, desc=f"extract {archive.name}", unit="file"),
                        **kwargs)
                except tarfile.TarError as exc:
                    filter_error = getattr(tarfile, "FilterError", None)
                    if filter_error is not None and isinstance(exc, filter_error):
                        # defence in depth: the stdlib filter refused what dap let through
                        raise UnsafeArchiveError(f"{archive}: {exc}; refused") from None
                    raise CorruptArchiveError(f"{archive} cannot be extracted, it is truncated "
                                              f"or corrupt ({exc}): delete it and run again"
                                              ) from None
                except (EOFError, zlib.error, lzma.LZMAError) as exc:
                    raise CorruptArchiveError(f"{archive} cannot be extracted, it is truncated "
                                              f"or corrupt ({type(exc).__name__}: {exc}): delete "
                                              "it and run again") from None
    return dest


# --------------------------------------------------------------------------------------------
# Installing a prepared tree into the dataset root
# --------------------------------------------------------------------------------------------
def _journal(root: Path, name: str) -> Path:
    return root / f".dap-installing-{name}.json"


def marker_path(root: str | os.PathLike, name: str) -> Path:
    """The file that says dataset ``name`` was installed completely under ``root``.

    Written only after the image counts passed (:func:`write_marker`).
    """
    return Path(root) / f".dap_{name}.json"


def pending_path(root: str | os.PathLike, name: str) -> Path:
    """The record of an install whose counts did not pass (yet): its entries and archives."""
    return Path(root) / f".dap_{name}.incomplete.json"


def write_marker(root: str | os.PathLike, name: str, info: dict) -> Path:
    """Write the completion marker of ``name`` atomically and drop its pending record."""
    path = atomic_write_text(marker_path(root, name), json.dumps(info, indent=1), fsync=True)
    pending_path(root, name).unlink(missing_ok=True)
    return path


def undo_interrupted_install(root: Path, name: str) -> None:
    """Remove what an install killed half-way moved into ``root`` (listed in its journal).

    Raises
    ------
    InstallBusyError
        The journal belongs to a process that is still running (another install in progress).
    """
    journal = _journal(root, name)
    if not journal.exists():
        return
    try:
        record = json.loads(journal.read_text())
    except (OSError, ValueError):
        record = {"entries": []}
    pid = record.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid):
        raise InstallBusyError(f"process {pid} is installing {name} into {root} right now "
                               f"({journal.name}); wait for it to finish, or stop it and run "
                               "again. If no install is running (the PID was reused), delete "
                               f"{journal} and the entries it lists")
    for entry in record.get("entries", []):
        p = root / check_name(entry, f"journal entry in {journal}")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    journal.unlink()


def install_tree(staging: Path, root: Path, name: str, info: dict) -> list[str]:
    """Move every entry of ``staging`` into ``root``; record them in the pending record.

    Refuses (before moving anything) when an entry already exists in ``root``. The moves run
    under a journal (with this process's PID) that :func:`undo_interrupted_install` replays
    after a kill. The completion marker is *not* written here: the caller writes it with
    :func:`write_marker` once the counts passed; until then :func:`pending_path` lists what
    was installed.
    """
    entries = sorted(os.listdir(staging))
    clashes = [e for e in entries if (root / e).exists() or (root / e).is_symlink()]
    if clashes:
        raise ValueError(f"{root} already holds {', '.join(clashes[:5])}"
                         f"{' ...' if len(clashes) > 5 else ''}; it was not installed by this "
                         "script: remove them or choose an empty --root")
    journal = _journal(root, name)
    atomic_write_text(journal, json.dumps({"entries": entries, "pid": os.getpid()}), fsync=True)
    try:
        for e in entries:
            os.rename(staging / e, root / e)
        atomic_write_text(pending_path(root, name), json.dumps({**info, "entries": entries},
                                                               indent=1), fsync=True)
    except BaseException:
        undo_interrupted_install(root, name)  # remove what was moved (this process's journal)
        raise
    journal.unlink()
    return entries


# --------------------------------------------------------------------------------------------
# Zenodo records (DAGM)
# --------------------------------------------------------------------------------------------
def zenodo_files(api_url: str, timeout: float = 60.0) -> list[dict]:
    """``[{"key", "url", "md5", "size"}]`` of a Zenodo record, from its JSON API.

    Every ``key`` must be one safe file name (:func:`check_name`), distinct, and every link
    an ``http``/``https`` address (:func:`check_url`); the whole record is checked before the
    caller downloads anything.

    Raises
    ------
    UnsafeNameError
        A key or a link is unsafe (the message shows it).
    DownloadError
        The record cannot be read or lists no files.
    """
    check_url(api_url, "Zenodo record address")
    req = urllib.request.Request(api_url, headers={"User-Agent": USER_AGENT,
                                                   "Accept": "application/json"})
    try:
        with _opener().open(req, timeout=timeout) as resp:
            record = json.loads(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(f"cannot read the Zenodo record {api_url}: {exc}") from None
    files = record.get("files") if isinstance(record, dict) else None
    if isinstance(files, dict):  # some API versions wrap the list
        files = files.get("entries", [])
        files = list(files.values()) if isinstance(files, dict) else files
    out = []
    for f in files or []:
        if not isinstance(f, dict):
            continue
        key = f.get("key") or f.get("filename")
        links = f.get("links", {}) if isinstance(f.get("links"), dict) else {}
        url = links.get("content") or links.get("self") or links.get("download")
        if not (key and url):
            continue
        check_name(key, f"the Zenodo record {api_url} lists the file name")
        check_url(url, f"the Zenodo record {api_url} lists, for {key!r}, the link")
        checksum = f.get("checksum", "")
        md5 = checksum.split(":", 1)[1] if isinstance(checksum, str) and checksum.startswith(
            "md5:") else None
        if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
            raise DownloadError(f"the Zenodo record {api_url} gives {key!r} the malformed md5 "
                                f"{md5!r}")
        if any(o["key"] == key for o in out):
            raise UnsafeNameError(f"the Zenodo record {api_url} lists the file name {key!r} "
                                  "twice; refused before anything was written")
        out.append({"key": key, "url": url, "md5": md5, "size": f.get("size")})
    if not out:
        raise DownloadError(f"the Zenodo record {api_url} lists no files")
    return out


__all__ = [
    "ChecksumError",
    "CorruptArchiveError",
    "UnsafeArchiveError",
    "UnsafeNameError",
    "DownloadError",
    "InstallBusyError",
    "Source",
    "SOURCES",
    "ZENODO_API",
    "MAX_NAME_BYTES",
    "check_name",
    "check_url",
    "check_archive",
    "file_digest",
    "verify_file",
    "download",
    "safe_extract",
    "check_tar_members",
    "check_zip_members",
    "is_archive",
    "install_tree",
    "undo_interrupted_install",
    "marker_path",
    "pending_path",
    "write_marker",
    "zenodo_files",
]
