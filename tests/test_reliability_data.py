"""Issue #15, data layer: unsafe names from the network or an archive, symlink chains without
the stdlib tar filter, truncated unpinned downloads, the installed marker, leftovers of killed
runs (dap.io), decompression bombs, and silently wrong data (mask sizes, 16-bit images,
symlinked object images). Everything offline: a small HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import select
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dap import io as dio
from dap.data import fetch as F
from dap.data import registry as R
from dap.data.folder import AnomalyDataset
from dap.data.foreground import CACHE_DIR
from dap.data.imageio import read_image
from dap.data.prepare import DOWNLOADS, prepare

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# A local HTTP server: Range, optional Content-Length, connections cut early
# --------------------------------------------------------------------------------------------
class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.no_length: set[str] = set()     # send no Content-Length (read until close)
        self.cut_once: dict[str, int] = {}   # close after this many body bytes, once
        self.served_up_to: dict[str, int] = {}  # the server only ever has this many bytes
        self.requests: list[tuple[str, str | None]] = []


def _handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            state.requests.append((path, rng))
            data = state.files.get(path)
            if data is None:
                self.send_error(404)
                return
            limit = state.served_up_to.get(path, len(data))
            start, status = 0, 200
            if rng:
                start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                if start >= limit:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:limit]
            self.send_response(status)
            if path not in state.no_length:
                self.send_header("Content-Length", str(len(data) - start))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            ctype = "application/json" if path.startswith("/api/") else "application/octet-stream"
            self.send_header("Content-Type", ctype)
            self.end_headers()
            cut = state.cut_once.pop(path, None)
            self.wfile.write(body if cut is None else body[:cut])
            self.wfile.flush()
            self.close_connection = True

    return Handler


@pytest.fixture()
def server():
    state = _State()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _png_bytes(value: int = 128, size: int = 16) -> bytes:
    buf = io.BytesIO()
    a = np.full((size, size), value, np.uint8)
    a[4:8, 4:8] = 255 - value
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _mask_bytes(size: int = 16) -> bytes:
    buf = io.BytesIO()
    m = np.zeros((size, size), np.uint8)
    m[4:8, 4:8] = 255
    Image.fromarray(m).save(buf, format="PNG")
    return buf.getvalue()


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def _mvtec_tar(mode: str = "w:gz") -> bytes:
    return _tar_bytes([_file("bottle/train/good/000.png", _png_bytes()),
                       _file("bottle/train/good/001.png", _png_bytes(90)),
                       _file("bottle/test/good/000.png", _png_bytes(100)),
                       _file("bottle/test/broken_large/000.png", _png_bytes(60)),
                       _file("bottle/ground_truth/broken_large/000_mask.png", _mask_bytes()),
                       _file("license.txt", b"CC BY-NC-SA 4.0\n")], mode)


def _dagm_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for split, n in (("Train", 3), ("Test", 3)):
            for i in range(1, n + 1):
                zf.writestr(f"DAGM/Class1/{split}/{i:04d}.PNG", _png_bytes(90, 20))
            zf.writestr(f"DAGM/Class1/{split}/Label/0002_label.PNG", _mask_bytes(20))
    return buf.getvalue()


def _dead_pid() -> int:
    """The PID of a process that has exited (and was reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture()
def small_mvtec_registry(monkeypatch):
    """MVTec AD with one category whose counts match the toy archive (2 / 1 / 1)."""
    info = R.DatasetInfo(name="mvtec", title="MVTec AD",
                         counts={"bottle": R.Counts(2, 1, 1)}, license="CC BY-NC-SA 4.0")
    monkeypatch.setitem(R.DATASETS, "mvtec", info)
    return info


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ============================================================================================
# 1. Names and links from a download record are validated before anything is written
# ============================================================================================
def _record(base: str, key: str, link: str, data: bytes) -> bytes:
    return json.dumps({"files": [{
        "key": key, "size": len(data), "checksum": "md5:" + hashlib.md5(data).hexdigest(),
        "links": {"self": link}}]}).encode()


@pytest.mark.parametrize("key", ["../../x.zip", "__ABS__", "sub/x.zip", "..", ".",
                                 "a\x00b.zip", "..\\..\\x.zip", "x" * 300 + ".zip", "C:x.zip"])
def test_record_key_must_be_one_safe_name(server, tmp_path, key):
    base, state = server
    if key == "__ABS__":
        key = str(tmp_path / "abs.zip")
    data = _dagm_zip()
    state.files["/files/x.zip"] = data
    state.files["/api/records/1"] = _record(base, key, base + "/files/x.zip", data)
    root = tmp_path / "data" / "dagm"
    with pytest.raises(F.UnsafeNameError, match=re.escape(repr(key))):
        prepare("dagm", root, url=base + "/api/records/1", progress=False, log=lambda s: None)
    assert state.requests == [("/api/records/1", None)]  # the file itself was never fetched
    assert not (tmp_path / "data" / "x.zip").exists() and not (tmp_path / "abs.zip").exists()
    assert not (root / DOWNLOADS).exists() or list((root / DOWNLOADS).iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dagm", "data"]


@pytest.mark.parametrize("scheme", ["file", "ftp"])
def test_record_links_limited_to_http(server, tmp_path, scheme):
    base, state = server
    secret = tmp_path / "secret.zip"
    secret.write_bytes(_dagm_zip())
    link = f"file://{secret}" if scheme == "file" else "ftp://127.0.0.1/x.zip"
    state.files["/api/records/1"] = _record(base, "DAGM.zip", link, secret.read_bytes())
    root = tmp_path / "dagm"
    with pytest.raises(F.UnsafeNameError, match=re.escape(link)):
        prepare("dagm", root, url=base + "/api/records/1", progress=False, log=lambda s: None)
    assert not (root / DOWNLOADS / "DAGM.zip").exists()
    assert not [p for p in root.rglob("*") if p.is_file()]


def test_download_refuses_non_http_url(tmp_path):
    src = tmp_path / "local.tar"
    src.write_bytes(_mvtec_tar("w"))
    with pytest.raises(F.UnsafeNameError, match="http"):
        F.download(f"file://{src}", tmp_path / "out" / "a.tar", progress=False)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_visa_csv_paths_must_stay_inside(tmp_path):
    from dap.data.convert import convert_visa

    src = tmp_path / "VisA"
    (src / "split_csv").mkdir(parents=True)
    (src / "candle").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "candle" / "0.png")
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)
    for field_, bad in (("object", "../../evil"), ("image", "../outside.png")):
        obj = bad if field_ == "object" else "candle"
        image = bad if field_ == "image" else "candle/0.png"
        (src / "split_csv" / "1cls.csv").write_text(
            f"object,split,label,image,mask\n{obj},train,normal,{image},\n")
        with pytest.raises(F.UnsafeNameError, match=re.escape(repr(bad))):
            convert_visa(src, tmp_path / "out" / "visa", mode="move", progress=False)
        assert outside.is_file() and not (tmp_path / "evil").exists()
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# ============================================================================================
# 2. Symlink chains: refused by dap's own check, also without tarfile's "data" filter
# ============================================================================================
def _chain_archive(tmp_path: Path) -> Path:
    data = _tar_bytes([_dir("x"), _link("x/y", ".."), _link("x/y/z", ".."),
                       _file("x/y/z/evil.txt", b"escaped")])
    work = tmp_path / "work"
    work.mkdir()
    (work / "chain.tar").write_bytes(data)
    return work / "chain.tar"


@pytest.mark.parametrize("stdlib_filter", [False, True])
def test_symlink_chain_refused_without_stdlib_filter(tmp_path, monkeypatch, stdlib_filter):
    if not stdlib_filter:  # Python 3.10.0-3.10.11 / 3.11.0-3.11.3: no tarfile.data_filter
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile.data_filter")
    archive = _chain_archive(tmp_path)
    with pytest.raises(F.UnsafeArchiveError, match=r"symlink 'x/y' -> '\.\.' points upward"):
        F.safe_extract(archive, archive.parent / "out")
    assert not (tmp_path / "evil.txt").exists() and not (archive.parent / "evil.txt").exists()
    assert sorted(p.name for p in archive.parent.iterdir()) == ["chain.tar"]


def test_sideways_and_downward_links_still_extract_without_filter(tmp_path, monkeypatch):
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    data = _tar_bytes([_file("d/a.txt", b"hello", mode=0o4777), _link("d/b.txt", "a.txt"),
                       _dir("d/sub"), _file("d/sub/c.txt", b"c"), _link("d/c", "sub/c.txt"),
                       _link("d/hard", "d/a.txt", tarfile.LNKTYPE)])
    (tmp_path / "a.tar").write_bytes(data)
    out = F.safe_extract(tmp_path / "a.tar", tmp_path / "out")
    assert (out / "d" / "b.txt").read_text() == "hello" and (out / "d" / "c").read_text() == "c"
    assert (out / "d" / "hard").read_text() == "hello"
    # without the stdlib filter dap strips setuid and group/other write bits itself
    assert (out / "d" / "a.txt").stat().st_mode & 0o7022 == 0


def test_hardlink_upward_refused(tmp_path):
    data = _tar_bytes([_file("a.txt", b"a"), _dir("x"), _link("h", "x/../a.txt", tarfile.LNKTYPE)])
    (tmp_path / "a.tar").write_bytes(data)
    with pytest.raises(F.UnsafeArchiveError, match="hard link 'h'"):
        F.safe_extract(tmp_path / "a.tar", tmp_path / "out")


# ============================================================================================
# 8. Unpinned downloads: a truncated archive is never accepted nor reused
# ============================================================================================
def test_unpinned_truncated_download_without_length_is_resumed(server, tmp_path):
    base, state = server
    data = _mvtec_tar("w:gz") + b""
    state.files["/a.tar.gz"] = data
    state.no_length.add("/a.tar.gz")
    state.cut_once["/a.tar.gz"] = len(data) // 2
    dest = F.download(base + "/a.tar.gz", tmp_path / "a.tar.gz", progress=False, backoff_s=0)
    assert dest.read_bytes() == data
    assert state.requests == [("/a.tar.gz", None), ("/a.tar.gz", f"bytes={len(data) // 2}-")]


@pytest.mark.parametrize("name,build", [("a.tar", lambda: _mvtec_tar("w")),
                                        ("a.tar.gz", lambda: _mvtec_tar("w:gz")),
                                        ("a.zip", _dagm_zip)])
def test_unpinned_truncated_download_is_deleted(server, tmp_path, name, build):
    base, state = server
    data = build()
    state.files["/" + name] = data
    state.no_length.add("/" + name)
    state.served_up_to["/" + name] = len(data) // 3  # the server itself has a short copy
    with pytest.raises(F.CorruptArchiveError, match=rf"{re.escape(name)}.*truncated or corrupt"):
        F.download(base + "/" + name, tmp_path / name, progress=False, backoff_s=0)
    assert list(tmp_path.iterdir()) == []  # neither the archive nor a .part to reuse


def test_unpinned_archive_on_disk_is_checked_again(server, tmp_path):
    base, state = server
    data = _mvtec_tar("w:xz")
    state.files["/a.tar.xz"] = data
    dest = tmp_path / "a.tar.xz"
    dest.write_bytes(data[: len(data) // 2])  # what an older dap renamed to its final name
    F.download(base + "/a.tar.xz", dest, progress=False)
    assert dest.read_bytes() == data and len(state.requests) == 1
    F.download(base + "/a.tar.xz", dest, progress=False)  # complete now: reused, no network
    assert len(state.requests) == 1


def test_unpinned_non_archive_without_length_is_refused(server, tmp_path):
    base, state = server
    state.files["/notes.bin"] = b"x" * 1000
    state.no_length.add("/notes.bin")
    with pytest.raises(F.ChecksumError, match="cannot be verified"):
        F.download(base + "/notes.bin", tmp_path / "notes.bin", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_check_archive_full_read(tmp_path):
    tar = _mvtec_tar("w")
    offsets = [m.offset for m in tarfile.open(fileobj=io.BytesIO(tar)).getmembers()]
    cases = {"boundary.tar": tar[:offsets[3]], "mid.tar": tar[:offsets[3] + 700],
             "a.tar.gz": _mvtec_tar("w:gz")[:-30], "a.tar.xz": _mvtec_tar("w:xz")[:-60],
             "a.tar.bz2": _mvtec_tar("w:bz2")[:-40], "a.zip": _dagm_zip()[:-100]}
    bad_crc = bytearray(_dagm_zip())
    i = bad_crc.index(b"\x89PNG") + 40
    bad_crc[i] ^= 0xFF
    cases["crc.zip"] = bytes(bad_crc)
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(F.CorruptArchiveError, match=re.escape(name)):
            F.check_archive(tmp_path / name)
    for name, data in {"ok.tar": tar, "ok.tar.gz": _mvtec_tar("w:gz"), "ok.zip": _dagm_zip()
                       }.items():
        (tmp_path / name).write_bytes(data)
        F.check_archive(tmp_path / name)


def test_prepare_dagm_unpinned_truncated_installs_nothing(server, tmp_path, monkeypatch):
    monkeypatch.setattr(F.time, "sleep", lambda s: None)  # no back-off between the retries
    base, state = server
    data = _dagm_zip()
    state.files["/DAGM.zip"] = data
    state.no_length.add("/DAGM.zip")
    state.served_up_to["/DAGM.zip"] = len(data) - 200
    root = tmp_path / "dagm"
    with pytest.raises(F.CorruptArchiveError):
        prepare("dagm", root, url=base + "/DAGM.zip", progress=False, log=lambda s: None)
    assert list((root / DOWNLOADS).iterdir()) == [] and not F.marker_path(root, "dagm").exists()


# ============================================================================================
# 9. The installed marker only after the counts pass
# ============================================================================================
def test_marker_not_written_when_counts_fail(server, tmp_path):
    base, state = server
    data = _mvtec_tar()
    state.files["/m.tar.gz"] = data
    root = tmp_path / "mvtec"
    logs: list[str] = []
    report = prepare("mvtec", root, url=base + "/m.tar.gz", sha256=_sha(data), progress=False,
                     log=logs.append)
    assert not report.ok and not F.marker_path(root, "mvtec").exists()
    assert (root / "bottle" / "train" / "good" / "000.png").is_file()  # the data stays usable
    n = len(state.requests)
    logs.clear()
    again = prepare("mvtec", root, url=base + "/m.tar.gz", sha256=_sha(data), progress=False,
                    log=logs.append)
    assert not any("already installed" in s for s in logs)
    assert not again.ok and len(state.requests) == n
    # the advice breaks the loop: not "run the same command" but what to delete first
    text = str(again)
    assert "delete" in text and "bottle" in text and "mvtec_anomaly_detection.tar.xz" in text


def test_marker_written_when_counts_pass(server, tmp_path, small_mvtec_registry):
    base, state = server
    data = _mvtec_tar()
    state.files["/m.tar.gz"] = data
    root = tmp_path / "mvtec"
    logs: list[str] = []
    assert prepare("mvtec", root, url=base + "/m.tar.gz", sha256=_sha(data), progress=False,
                   log=logs.append).ok
    marker = json.loads(F.marker_path(root, "mvtec").read_text())
    assert marker["entries"] == ["bottle", "license.txt"]
    assert _hidden(root) == [".dap_mvtec.json"]
    prepare("mvtec", root, url=base + "/m.tar.gz", sha256=_sha(data), progress=False,
            log=logs.append)
    assert "already installed" in logs[-1]


def test_installed_then_files_removed_advises_instead_of_looping(server, tmp_path,
                                                                  small_mvtec_registry):
    base, state = server
    data = _mvtec_tar()
    state.files["/m.tar.gz"] = data
    root = tmp_path / "mvtec"
    prepare("mvtec", root, url=base + "/m.tar.gz", sha256=_sha(data), progress=False,
            log=lambda s: None)
    (root / "bottle" / "train" / "good" / "001.png").unlink()
    report = prepare("mvtec", root, url=base + "/m.tar.gz", sha256=_sha(data), progress=False,
                     log=lambda s: None)
    assert not report.ok and "delete" in str(report) and ".dap_mvtec.json" in str(report)


# ============================================================================================
# 10. dap.io and the leftovers of killed runs
# ============================================================================================
def test_atomic_write_helpers(tmp_path):
    p = dio.atomic_write_text(tmp_path / "a" / "r.md", "héllo")
    assert p.read_text(encoding="utf-8") == "héllo"
    dio.atomic_write_bytes(p, b"\x00\x01", fsync=True)
    assert p.read_bytes() == b"\x00\x01" and _hidden(p.parent) == []

    with dio.atomic_path(tmp_path / "m.pt") as tmp:
        assert re.fullmatch(rf"\.m\.pt\.tmp-{os.getpid()}-[0-9a-f]{{8}}", tmp.name)
        torch.save({"w": torch.ones(2)}, tmp)
    assert torch.load(tmp_path / "m.pt")["w"].sum() == 2

    with pytest.raises(RuntimeError, match="half"):
        with dio.atomic_path(tmp_path / "m.pt") as tmp:
            tmp.write_bytes(b"half a checkpoint")
            raise RuntimeError("half written")
    assert torch.load(tmp_path / "m.pt")["w"].sum() == 2 and _hidden(tmp_path) == []

    with dio.atomic_path(tmp_path / "folder") as tmp:  # folders too
        tmp.mkdir()
        (tmp / "x").write_text("x")
    assert (tmp_path / "folder" / "x").read_text() == "x"
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with dio.atomic_path(tmp_path / "empty"):
            pass


def test_clean_stale_removes_dead_keeps_live(tmp_path):
    dead = _dead_pid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {"dead_dir": f".x.staging-{dead}-0123abcd", "dead_file": f".r.md.tmp-{dead}",
                 "live": f".x.staging-{sleeper.pid}-0123abcd",
                 "mine": dio.tagged_name("x", "staging"), "untagged": ".x.staging-keep",
                 "user": "x.staging-1"}
        for key, name in names.items():
            if key.endswith("file"):
                (tmp_path / name).write_text("t")
            else:
                (tmp_path / name).mkdir()
                (tmp_path / name / "payload").write_bytes(b"0" * 100)
        removed = dio.clean_stale(tmp_path, ".*")
        assert sorted(p.name for p in removed) == sorted([names["dead_dir"], names["dead_file"]])
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {names[k] for k in ("live", "mine", "untagged", "user")}
    finally:
        sleeper.kill()
        sleeper.wait()
    dio.clean_stale(tmp_path, ".x.staging-*")  # the sleeper is dead now
    assert not (tmp_path / names["live"]).exists()
    assert dio.clean_stale(tmp_path / "missing") == []


_CHILD = """
import sys, tarfile, time
from dap.data.prepare import prepare
orig = tarfile.TarFile.extractall
def slow(self, *a, **k):
    orig(self, *a, **k)
    print("extracted", flush=True)
    time.sleep(120)
tarfile.TarFile.extractall = slow
prepare("mvtec", sys.argv[1], url=sys.argv[2], sha256=sys.argv[3], progress=False,
        log=lambda s: None)
"""


def test_sigkilled_prepare_leftovers_cleaned_next_run(server, tmp_path, small_mvtec_registry):
    base, state = server
    data = _mvtec_tar()
    state.files["/m.tar.gz"] = data
    root = tmp_path / "mvtec"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(root), base + "/m.tar.gz",
                              _sha(data)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "TQDM_DISABLE": "1"})
    try:
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready and child.stdout.readline().strip() == "extracted"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    staged = [p for p in root.iterdir() if p.name.startswith(".") and p.is_dir()]
    assert staged and any(any(p.rglob("*.png")) for p in staged)  # the kill left a staging folder
    assert all(str(child.pid) in p.name for p in staged)
    # a marker write cut by a kill leaves a temp file; a live process's staging is never touched
    (root / f"..dap_mvtec.json.tmp-{child.pid}-0123abcd").write_text("{")
    live = dio.make_temp_dir(root, "dap-mvtec", "staging")
    report = prepare("mvtec", root, url=base + "/m.tar.gz", sha256=_sha(data), progress=False,
                     log=lambda s: None)
    assert report.ok
    assert _hidden(root) == sorted([".dap_mvtec.json", live.name])
    live.rmdir()


def test_stale_extract_and_convert_folders_cleaned(tmp_path):
    from dap.data.convert import convert_dagm

    dead = _dead_pid()
    (tmp_path / "a.tar").write_bytes(_mvtec_tar("w"))
    for name in (f".out.extract-{dead}-00000000", f".dagm.convert-{dead}-00000000"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "big.bin").write_bytes(b"0" * 1000)
    F.safe_extract(tmp_path / "a.tar", tmp_path / "out")
    with zipfile.ZipFile(io.BytesIO(_dagm_zip())) as zf:
        zf.extractall(tmp_path / "raw")
    convert_dagm(tmp_path / "raw", tmp_path / "dagm", progress=False)
    assert _hidden(tmp_path) == []


def test_builtin_cleans_stale_build_of_dead_process(tmp_path, monkeypatch):
    from dap.data import builtin as B

    stale = tmp_path / f".gravel.tmp-{_dead_pid()}-00000000"
    stale.mkdir()
    monkeypatch.setattr(B, "draw_defect", lambda *a, **k: (_ for _ in ()).throw(
        RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        B.write_builtin(tmp_path, size=32, categories=["gravel"], progress=False)
    assert list(tmp_path.iterdir()) == []


def test_journal_of_live_installer_is_not_undone(tmp_path):
    (tmp_path / "bottle").mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".dap-installing-mvtec.json").write_text(json.dumps(
            {"entries": ["bottle"], "pid": sleeper.pid}))
        with pytest.raises(F.InstallBusyError, match=f"process {sleeper.pid}"):
            F.undo_interrupted_install(tmp_path, "mvtec")
        assert (tmp_path / "bottle").is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    F.undo_interrupted_install(tmp_path, "mvtec")
    assert list(tmp_path.iterdir()) == []


# ============================================================================================
# 11. Decompression bombs and other unreadable images name the file
# ============================================================================================
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (1-bit grey) with an empty image stream."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def test_decompression_bomb_names_file(tmp_path):
    from dap.data.imageio import ImageReadError

    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(20000, 20000))
    with pytest.raises(ImageReadError, match=rf"{re.escape(str(path))}.*20000 x 20000.*"
                                             r"MAX_IMAGE_PIXELS"):
        read_image(path)
    assert issubclass(ImageReadError, ValueError)


def test_truncated_image_names_file(tmp_path):
    from dap.data.imageio import ImageReadError

    path = tmp_path / "cut.png"
    path.write_bytes(_png_bytes(size=64)[:60])
    with pytest.raises(ImageReadError, match=re.escape(str(path))):
        read_image(path)


# ============================================================================================
# 12. Silently wrong data
# ============================================================================================
def _object_png(path: Path, size: int = 48) -> None:
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (size * 0.3) ** 2
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(disc, 210, 30).astype(np.uint8)).save(path)


def _category(root: Path, mask_size: int = 48) -> Path:
    cat = root / "bottle"
    for i in range(3):
        _object_png(cat / "train" / "good" / f"{i:03d}.png")
    _object_png(cat / "test" / "good" / "000.png")
    _object_png(cat / "test" / "broken_large" / "000.png")
    m = np.zeros((mask_size, mask_size), np.uint8)
    m[10:20, 10:20] = 255
    (cat / "ground_truth" / "broken_large").mkdir(parents=True)
    Image.fromarray(m).save(cat / "ground_truth" / "broken_large" / "000_mask.png")
    return cat


def test_mask_of_other_size_is_refused(tmp_path):
    from dap.data.imageio import DataError

    cat = _category(tmp_path, mask_size=24)
    ds = AnomalyDataset(tmp_path, "bottle", "test", image_size=32, foreground="full")
    with pytest.raises(DataError, match=r"000_mask\.png.* 24 x 24 .*000\.png.* 48 x 48"):
        ds[1]
    assert ds[0]["label"] == 0
    assert cat.is_dir()


def test_16bit_png_scaled_by_bit_depth(tmp_path):
    a = np.array([[0, 255], [128, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "low.png")  # mode I;16
    low = np.array([[0, 255], [128, 200]], np.uint16)
    Image.fromarray(low).save(tmp_path / "dark.png")
    assert Image.open(tmp_path / "dark.png").mode.startswith("I;16")
    assert read_image(tmp_path / "low.png")[..., 0].tolist() == [[0, 1], [0, 255]]
    # all values <= 255 but 16-bit: a very dark image, not a full-range 8-bit one
    assert read_image(tmp_path / "dark.png")[..., 0].tolist() == [[0, 1], [0, 1]]
    # mode "I" (how older Pillow opens 16-bit PNGs; 32-bit TIFF) is read as 16-bit too
    Image.fromarray(np.array([[0, 65535], [200, 32768]], np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert read_image(tmp_path / "i.tif")[..., 0].tolist() == [[0, 255], [1, 128]]
    from dap.data.imageio import DataError

    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "deep.tif")
    with pytest.raises(DataError, match=r"deep\.tif.*70000"):
        read_image(tmp_path / "deep.tif")


def test_foreground_cache_with_symlinked_image_folder(tmp_path):
    store = tmp_path / "store"
    for i in range(3):
        _object_png(store / f"{i:03d}.png")
    root = tmp_path / "data"
    cat = _category(root)
    for p in (cat / "train" / "good").iterdir():
        p.unlink()
    (cat / "train" / "good").rmdir()
    (cat / "train" / "good").symlink_to(store, target_is_directory=True)  # a linked folder
    os.unlink(cat / "test" / "good" / "000.png")
    (cat / "test" / "good" / "000.png").symlink_to(store / "000.png")  # a linked file
    train = AnomalyDataset(root, "bottle", "train", image_size=48, val_fraction=0.0)
    assert train.foreground_mode == "auto"
    fg = train[0]["foreground"][0]
    assert fg[24, 24] == 1 and fg[1, 1] == 0
    assert (cat / CACHE_DIR / "auto" / "train" / "good" / "000.png").is_file()
    assert not (store / CACHE_DIR).exists() and len(list(store.iterdir())) == 3
    test = AnomalyDataset(root, "bottle", "test", image_size=48)
    assert test[0]["foreground"][0][24, 24] == 1
    assert (cat / CACHE_DIR / "auto" / "test" / "good" / "000.png").is_file()


def test_stale_cached_foreground_of_other_size_is_recomputed(tmp_path):
    cat = _category(tmp_path)
    cache = cat / CACHE_DIR / "auto" / "train" / "good"
    cache.mkdir(parents=True)
    (cache / f".000.png.tmp-{_dead_pid()}-00000000").write_bytes(b"half a png")
    ds = AnomalyDataset(tmp_path, "bottle", "train", image_size=48, val_fraction=0.0)
    ds[0]
    cached = cat / CACHE_DIR / "auto" / "train" / "good" / "000.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(cached)  # newer, but the wrong size
    fg = ds[0]["foreground"][0]
    assert fg[24, 24] == 1 and np.asarray(Image.open(cached)).shape == (48, 48)
    assert _hidden(cache) == []  # the killed writer's temp file is gone
