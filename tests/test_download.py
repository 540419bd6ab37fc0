"""data_scripts/ and its library (dap.data.fetch, .prepare, .convert, .verify), offline.

A small HTTP server on 127.0.0.1 (Range requests, a connection cut after N bytes, a server that
ignores Range, a Zenodo-like record API) serves archives the tests build: a good one, a
corrupted one, archives with a ``../`` member, an escaping symlink, an absolute path, a device
file; VisA and DAGM-shaped trees for the conversions.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dap.data import fetch as F
from dap.data.convert import convert_dagm, convert_visa
from dap.data.prepare import DOWNLOADS, prepare
from dap.data.verify import verify_dataset

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# A local HTTP server with Range support
# --------------------------------------------------------------------------------------------
class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_once: dict[str, int] = {}   # path -> close after this many bytes, once
        self.ignore_range: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []


def _handler(state: _State):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            state.requests.append((path, rng))
            data = state.files.get(path)
            if data is None:
                self.send_error(404)
                return
            start, status = 0, 200
            if rng and path not in state.ignore_range:
                m = re.fullmatch(r"bytes=(\d+)-", rng)
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            body = data[start:]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
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
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield base, state
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------------------------
# Archive builders
# --------------------------------------------------------------------------------------------
def _png_bytes(value: int = 128, size: int = 16, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    a = np.full((size, size), value, np.uint8)
    a[4:8, 4:8] = 255 - value
    Image.fromarray(a).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def _tar(entries: dict[str, bytes], mode: str = "w:gz", extra: list[tarfile.TarInfo] = ()
         ) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buf.getvalue()


def _mvtec_entries() -> dict[str, bytes]:
    mask = io.BytesIO()
    m = np.zeros((16, 16), np.uint8)
    m[4:8, 4:8] = 255
    Image.fromarray(m).save(mask, format="PNG")
    return {"bottle/train/good/000.png": _png_bytes(), "bottle/train/good/001.png": _png_bytes(90),
            "bottle/test/good/000.png": _png_bytes(100),
            "bottle/test/broken_large/000.png": _png_bytes(60),
            "bottle/ground_truth/broken_large/000_mask.png": mask.getvalue(),
            "license.txt": b"CC BY-NC-SA 4.0\n"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    """Hidden or partial files anywhere under ``folder``."""
    return [str(p) for p in folder.rglob("*") if p.name.startswith(".") or
            p.name.endswith(".part")]


# --------------------------------------------------------------------------------------------
# download(): checksums, resume
# --------------------------------------------------------------------------------------------
def test_download_good_archive_then_cached(server, tmp_path):
    base, state = server
    data = _tar(_mvtec_entries())
    state.files["/a.tar.gz"] = data
    dest = F.download(base + "/a.tar.gz", tmp_path / "a.tar.gz", sha256=_sha(data),
                      progress=False)
    assert dest.read_bytes() == data and not (tmp_path / "a.tar.gz.part").exists()
    n = len(state.requests)
    F.download(base + "/a.tar.gz", dest, sha256=_sha(data), progress=False)
    assert len(state.requests) == n  # already on disk and verified: no network


def test_download_corrupted_is_deleted(server, tmp_path):
    base, state = server
    good = _tar(_mvtec_entries())
    state.files["/a.tar.gz"] = good[:-10] + b"0123456789"
    with pytest.raises(F.ChecksumError, match="corrupted .* sha256 is .* expected"):
        F.download(base + "/a.tar.gz", tmp_path / "a.tar.gz", sha256=_sha(good), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_download_resumes_after_cut_connection(server, tmp_path):
    base, state = server
    data = bytes(range(256)) * 400  # 100 KiB
    state.files["/big.bin"] = data
    state.cut_once["/big.bin"] = 30_000
    dest = F.download(base + "/big.bin", tmp_path / "big.bin", sha256=_sha(data), retries=2,
                      progress=False, backoff_s=0)
    assert dest.read_bytes() == data
    assert state.requests == [("/big.bin", None), ("/big.bin", "bytes=30000-")]


def test_download_resumes_partial_file_from_earlier_run(server, tmp_path):
    base, state = server
    data = bytes(range(256)) * 400
    state.files["/big.bin"] = data
    state.cut_once["/big.bin"] = 12_345
    with pytest.raises(F.DownloadError, match=r"12345 bytes are kept in .*big.bin.part"):
        F.download(base + "/big.bin", tmp_path / "big.bin", sha256=_sha(data), retries=0,
                   progress=False)
    assert (tmp_path / "big.bin.part").stat().st_size == 12_345
    assert not (tmp_path / "big.bin").exists()
    F.download(base + "/big.bin", tmp_path / "big.bin", sha256=_sha(data), progress=False)
    assert (tmp_path / "big.bin").read_bytes() == data
    assert state.requests[-1] == ("/big.bin", "bytes=12345-")


def test_download_server_ignoring_range_restarts(server, tmp_path):
    base, state = server
    data = b"x" * 5000 + b"y" * 5000
    state.files["/f.bin"] = data
    state.ignore_range.add("/f.bin")
    (tmp_path / "f.bin.part").write_bytes(data[:3000])
    F.download(base + "/f.bin", tmp_path / "f.bin", sha256=_sha(data), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_download_complete_part_answered_416(server, tmp_path):
    base, state = server
    data = b"z" * 4096
    state.files["/f.bin"] = data
    (tmp_path / "f.bin.part").write_bytes(data)
    F.download(base + "/f.bin", tmp_path / "f.bin", md5=hashlib.md5(data).hexdigest(),
               progress=False)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_archive_on_disk_with_wrong_checksum_is_detected(server, tmp_path):
    base, state = server
    dest = tmp_path / "a.tar.gz"
    dest.write_bytes(b"an old or damaged archive")
    with pytest.raises(F.ChecksumError, match="already on disk is damaged"):
        F.download(base + "/a.tar.gz", dest, sha256="0" * 64, progress=False)
    assert state.requests == [] and dest.exists()  # not contacted, the user's file kept


def test_download_http_error(server, tmp_path):
    base, _ = server
    with pytest.raises(F.DownloadError, match="HTTP 404"):
        F.download(base + "/missing.tar", tmp_path / "m.tar", progress=False)


# --------------------------------------------------------------------------------------------
# safe_extract()
# --------------------------------------------------------------------------------------------
def _extract_refused(tmp_path: Path, data: bytes, match: str, name: str = "evil.tar") -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = work / name
    archive.write_bytes(data)
    with pytest.raises(F.UnsafeArchiveError, match=match):
        F.safe_extract(archive, work / "out")
    assert sorted(p.name for p in work.iterdir()) == [name]  # nothing extracted, no temp
    assert not (tmp_path / "evil.txt").exists() and not (work / "evil.txt").exists()


def test_extract_good_archive(tmp_path):
    archive = tmp_path / "a.tar.xz"
    archive.write_bytes(_tar(_mvtec_entries(), mode="w:xz"))
    out = F.safe_extract(archive, tmp_path / "out")
    assert (out / "bottle" / "train" / "good" / "000.png").is_file()
    with pytest.raises(FileExistsError):
        F.safe_extract(archive, out)


def test_extract_refuses_dotdot_member(tmp_path):
    _extract_refused(tmp_path, _tar({"ok/a.txt": b"a", "../evil.txt": b"evil"}), r"contains '\.\.'")


def test_extract_refuses_absolute_member(tmp_path):
    _extract_refused(tmp_path, _tar({"/tmp/evil.txt": b"evil"}), "absolute path")


def test_extract_refuses_escaping_symlink(tmp_path):
    link = tarfile.TarInfo("data/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../outside"
    _extract_refused(tmp_path, _tar({"data/a.txt": b"a"}, extra=[link]), "symlink .* outside")
    link2 = tarfile.TarInfo("link")
    link2.type, link2.linkname = tarfile.SYMTYPE, "/etc/passwd"
    (tmp_path / "work").rename(tmp_path / "work1")
    _extract_refused(tmp_path, _tar({}, extra=[link2]), "symlink .* outside")


def test_extract_refuses_escaping_hardlink_and_devices(tmp_path):
    hard = tarfile.TarInfo("h")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../secret"
    _extract_refused(tmp_path, _tar({}, extra=[hard]), "hard link .* outside")
    dev = tarfile.TarInfo("dev/null")
    dev.type = tarfile.CHRTYPE
    (tmp_path / "work").rename(tmp_path / "work1")
    _extract_refused(tmp_path, _tar({}, extra=[dev]), "device")


def test_extract_keeps_internal_symlink(tmp_path):
    link = tarfile.TarInfo("data/alias.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "a.txt"
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar({"data/a.txt": b"hello"}, mode="w", extra=[link]))
    out = F.safe_extract(archive, tmp_path / "out")
    assert (out / "data" / "alias.txt").read_text() == "hello"


def test_extract_refuses_zip_dotdot(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.txt", "ok")
        zf.writestr("../evil.txt", "evil")
    _extract_refused(tmp_path, buf.getvalue(), r"contains '\.\.'", name="evil.zip")


def test_extract_interrupted_leaves_nothing(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar(_mvtec_entries()))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tarfile.TarFile, "extractall", interrupt)
    with pytest.raises(KeyboardInterrupt):
        F.safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


# --------------------------------------------------------------------------------------------
# prepare(): the whole pipeline
# --------------------------------------------------------------------------------------------
def test_prepare_mvtec_installs_and_is_idempotent(server, tmp_path, monkeypatch):
    from dap.data import registry as R

    # a toy archive: MVTec AD narrowed to the one category it holds, with its counts, so the
    # count check passes and the completion marker is written (tests/test_reliability_data.py
    # covers an archive whose counts fail: no marker)
    monkeypatch.setitem(R.DATASETS, "mvtec", R.DatasetInfo(
        name="mvtec", title="MVTec AD", counts={"bottle": R.Counts(2, 1, 1)}))
    base, state = server
    data = _tar(_mvtec_entries(), mode="w:xz")
    state.files["/mirror/mvtec.tar.xz"] = data
    root = tmp_path / "mvtec"
    logs: list[str] = []
    report = prepare("mvtec", root, url=base + "/mirror/mvtec.tar.xz", sha256=_sha(data),
                     progress=False, log=logs.append)
    assert (root / "bottle" / "test" / "broken_large" / "000.png").is_file()
    assert (root / DOWNLOADS / "mvtec_anomaly_detection.tar.xz").read_bytes() == data
    assert F.marker_path(root, "mvtec").is_file()
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [".dap_mvtec.json"]
    bottle = next(c for c in report.categories if c.category == "bottle")
    assert bottle.found.train == 2 and report.ok
    assert "bottle" in str(report) and "all categories complete" in str(report)

    from dap.data.folder import AnomalyDataset

    assert len(AnomalyDataset(root, "bottle", "test", image_size=16)) == 2
    n = len(state.requests)
    prepare("mvtec", root, url=base + "/mirror/mvtec.tar.xz", sha256=_sha(data),
            progress=False, log=logs.append)
    assert len(state.requests) == n and "already installed" in logs[-1]


def test_prepare_corrupted_archive_extracts_nothing(server, tmp_path):
    base, state = server
    good = _tar(_mvtec_entries())
    state.files["/mvtec.tar.xz"] = good[:-20] + b"\0" * 20
    root = tmp_path / "mvtec"
    with pytest.raises(F.ChecksumError):
        prepare("mvtec", root, url=base + "/mvtec.tar.xz", sha256=_sha(good), progress=False,
                log=lambda s: None)
    assert [p.name for p in root.iterdir()] == [DOWNLOADS]
    assert list((root / DOWNLOADS).iterdir()) == []


def test_prepare_refuses_to_overwrite_user_files(server, tmp_path):
    base, state = server
    data = _tar(_mvtec_entries())
    state.files["/m.tar.gz"] = data
    root = tmp_path / "mvtec"
    (root / "bottle").mkdir(parents=True)
    with pytest.raises(ValueError, match="already holds bottle"):
        prepare("mvtec", root, url=base + "/m.tar.gz", sha256=_sha(data), progress=False,
                log=lambda s: None)
    assert not (root / "license.txt").exists() and not _leftovers(root)


def test_undo_interrupted_install(tmp_path):
    (tmp_path / "bottle").mkdir()
    (tmp_path / "license.txt").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / ".dap-installing-mvtec.json").write_text(json.dumps(
        {"entries": ["bottle", "license.txt"]}))
    F.undo_interrupted_install(tmp_path, "mvtec")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_prepare_mpdd_prints_manual_steps(tmp_path):
    logs: list[str] = []
    assert prepare("mpdd", tmp_path / "mpdd", log=logs.append) is None
    assert "github.com/stepanje/MPDD" in logs[0] and "verify.py mpdd" in logs[0]


# --------------------------------------------------------------------------------------------
# VisA and DAGM: conversion, and the pipeline through a Zenodo-like record
# --------------------------------------------------------------------------------------------
def _visa_tree(root: Path) -> None:
    rows = []
    for obj in ("candle", "pcb1"):
        d = root / obj / "Data"
        (d / "Images" / "Normal").mkdir(parents=True)
        (d / "Images" / "Anomaly").mkdir(parents=True)
        (d / "Masks" / "Anomaly").mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((12, 16, 3), 50 + i, np.uint8)).save(
                d / "Images" / "Normal" / f"{i:04d}.JPG")
            rows.append([obj, "train" if i < 3 else "test", "normal",
                         f"{obj}/Data/Images/Normal/{i:04d}.JPG", ""])
        for i in range(2):
            Image.fromarray(np.full((12, 16, 3), 200, np.uint8)).save(
                d / "Images" / "Anomaly" / f"{i:03d}.JPG")
            m = np.zeros((12, 16), np.uint8)
            m[2:5, 3:9] = 7 + i  # VisA masks hold small label values, not 255
            Image.fromarray(m).save(d / "Masks" / "Anomaly" / f"{i:03d}.png")
            rows.append([obj, "test", "anomaly", f"{obj}/Data/Images/Anomaly/{i:03d}.JPG",
                         f"{obj}/Data/Masks/Anomaly/{i:03d}.png"])
    (root / "split_csv").mkdir()
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)


def _dagm_tree(root: Path) -> None:
    for cls in ("Class1", "Class2"):
        for split, n in (("Train", 5), ("Test", 4)):
            d = root / cls / split
            (d / "Label").mkdir(parents=True)
            for i in range(1, n + 1):
                Image.fromarray(np.full((20, 20), 90, np.uint8)).save(d / f"{i:04d}.PNG")
            for i in (2, 3):  # defective: an elliptical weak label
                yy, xx = np.mgrid[:20, :20]
                lab = (((yy - 10) / 6) ** 2 + ((xx - 10) / 3) ** 2 <= 1).astype(np.uint8)
                Image.fromarray(lab).save(d / "Label" / f"{i:04d}_label.PNG")
            (d / "Label" / "Labels.txt").write_text("1\n")


def test_convert_visa(tmp_path):
    _visa_tree(tmp_path / "VisA")
    counts = convert_visa(tmp_path / "VisA", tmp_path / "visa")
    assert counts["candle"] == {"train": 3, "test_good": 1, "test_defect": 2}
    out = tmp_path / "visa" / "candle"
    assert len(list((out / "train" / "good").iterdir())) == 3
    mask = np.asarray(Image.open(out / "ground_truth" / "bad" / "000_mask.png"))
    assert set(np.unique(mask)) == {0, 255} and (mask == 255).sum() == 18
    assert (tmp_path / "VisA" / "candle" / "Data" / "Images" / "Normal" / "0000.JPG").exists()
    from dap.data.folder import AnomalyDataset

    test = AnomalyDataset(tmp_path / "visa", "candle", "test", image_size=8)
    assert test.labels == [0, 1, 1] and test[1]["mask"].sum() > 0
    with pytest.raises(FileExistsError):
        convert_visa(tmp_path / "VisA", tmp_path / "visa")


def test_convert_visa_missing_mask_leaves_nothing(tmp_path):
    _visa_tree(tmp_path / "VisA")
    (tmp_path / "VisA" / "pcb1" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(FileNotFoundError, match="has no mask"):
        convert_visa(tmp_path / "VisA", tmp_path / "visa")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VisA"]


def test_convert_dagm(tmp_path):
    _dagm_tree(tmp_path / "DAGM_KaggleUpload")
    counts = convert_dagm(tmp_path, tmp_path / "dagm")
    assert counts["Class1"] == {"train": 3, "test_good": 2, "test_defect": 2,
                                "train_defect_skipped": 2}
    out = tmp_path / "dagm" / "Class2"
    mask = np.asarray(Image.open(out / "ground_truth" / "defect" / "0002_mask.png"))
    assert set(np.unique(mask)) == {0, 255}
    report = verify_dataset("dagm", tmp_path / "dagm", ["Class1", "Class2"])
    assert report.ok, str(report)
    from dap.data.folder import AnomalyDataset

    ds = AnomalyDataset(tmp_path / "dagm", "Class1", "test", image_size=20)
    assert ds.foreground_mode == "full" and sum(ds.labels) == 2


def test_prepare_visa_through_http(server, tmp_path):
    base, state = server
    _visa_tree(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted((tmp_path / "src").rglob("*")):
            tar.add(p, arcname=str(p.relative_to(tmp_path / "src")), recursive=False)
    data = buf.getvalue()
    state.files["/VisA.tar"] = data
    root = tmp_path / "visa"
    prepare("visa", root, url=base + "/VisA.tar", sha256=_sha(data), progress=False,
            log=lambda s: None)
    assert len(list((root / "pcb1" / "test" / "bad").iterdir())) == 2
    assert (root / DOWNLOADS / "VisA_20220922.tar").is_file()
    assert not (root / "split_csv").exists() and not _leftovers(root / "pcb1")


def test_prepare_dagm_through_zenodo_record(server, tmp_path):
    base, state = server
    _dagm_tree(tmp_path / "src" / "DAGM_KaggleUpload")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted((tmp_path / "src").rglob("*")):
            if p.is_file():
                zf.write(p, str(p.relative_to(tmp_path / "src")))
    data = buf.getvalue()
    state.files["/files/DAGM_KaggleUpload.zip/content"] = data
    state.files["/api/records/12750201"] = json.dumps({"files": [{
        "key": "DAGM_KaggleUpload.zip", "size": len(data),
        "checksum": "md5:" + hashlib.md5(data).hexdigest(),
        "links": {"self": base + "/files/DAGM_KaggleUpload.zip/content"}}]}).encode()
    root = tmp_path / "dagm"
    logs: list[str] = []
    report = prepare("dagm", root, url=base + "/api/records/12750201", progress=False,
                     log=logs.append)
    assert any(s.startswith("WARNING: dap pins no checksum") for s in logs)
    assert any(f"sha256 of DAGM_KaggleUpload.zip: {_sha(data)}" in s for s in logs)
    assert (root / "Class2" / "test" / "defect" / "0003.PNG").is_file()
    assert {c.category for c in report.categories if c.ok} == {"Class1", "Class2"}


# --------------------------------------------------------------------------------------------
# The scripts themselves
# --------------------------------------------------------------------------------------------
def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "data_scripts" / script), *args],
                          capture_output=True, text=True, timeout=120)


def test_download_script_reports_checksum_error(server, tmp_path):
    base, state = server
    state.files["/dtd.tar.gz"] = b"not the archive"
    r = _run("download.py", "dtd", "--root", str(tmp_path / "dtd"), "--url",
             base + "/dtd.tar.gz", "--md5", "0" * 32, "--quiet")
    assert r.returncode == 2, r.stderr
    assert "dap data download: error:" in r.stderr and "md5 is" in r.stderr


def test_verify_script_says_what_is_missing(tmp_path):
    cat = tmp_path / "bottle"
    (cat / "train" / "good").mkdir(parents=True)
    (cat / "train" / "good" / "000.png").write_bytes(_png_bytes())
    r = _run("verify.py", "mvtec", "--root", str(tmp_path), "--categories", "bottle", "cable")
    assert r.returncode == 1
    assert "train/good: 1 images, expected 209 (208 missing)" in r.stdout
    assert "cable" in r.stdout and "MISSING" in r.stdout
    assert "python data_scripts/download.py mvtec --root" in r.stdout
