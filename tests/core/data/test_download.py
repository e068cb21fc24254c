"""Downloads against a local HTTP server with Range support: resume, checksum, atomic, extract."""
from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.errors import UserError
from core.data.download import DATASETS, Dataset, download


class _Server:
    """Serves `payload` at /data.zip; honours `Range: bytes=N-` (206) like Zenodo does."""

    def __init__(self, payload: bytes, cut_after: int | None = None):
        self.payload, self.cut_after, self.ranges = payload, cut_after, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(server.payload):
                    self.send_response(416)
                    self.end_headers()
                    return
                body = server.payload[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.end_headers()
                if server.cut_after is not None:          # simulate a dropped connection
                    body, server.cut_after = body[:server.cut_after], None
                    self.wfile.write(body)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data.zip"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for cls in ("ADI", "TUM"):
            for i in range(3):
                zf.writestr(f"NCT-MINI/{cls}/{cls}-{i}.tif", bytes([i]) * 5000)
    return buf.getvalue()


def _dataset(url: str, payload: bytes, md5: str | None = None) -> Dataset:
    return Dataset("NCT-MINI.zip", url, md5 or hashlib.md5(payload).hexdigest(), len(payload),
                   "https://example.org/record", True)


def test_download_resumes_verifies_and_extracts(tmp_path):
    payload = _zip_bytes()
    with _Server(payload, cut_after=len(payload) // 3) as server:
        ds = _dataset(server.url, payload)
        with pytest.raises(UserError, match="run again to resume|resume"):
            download("nct-mini", tmp_path, dataset=ds)      # connection dropped mid-file
        part = tmp_path / "NCT-MINI.zip.part"
        assert part.exists() and not (tmp_path / "NCT-MINI.zip").exists()   # never looks complete
        have = part.stat().st_size
        assert 0 < have < len(payload)
        result = download("nct-mini", tmp_path, dataset=ds)
        assert server.ranges[-1] == f"bytes={have}-"           # resumed, not restarted
    assert (tmp_path / "NCT-MINI.zip").read_bytes() == payload and not part.exists()
    assert result["extracted"] == [str(tmp_path / "NCT-MINI")]
    assert sorted(p.name for p in (tmp_path / "NCT-MINI" / "TUM").iterdir()) == ["TUM-0.tif", "TUM-1.tif", "TUM-2.tif"]
    again = download("nct-mini", tmp_path, dataset=ds)          # complete: verified, not refetched
    assert again["file"] == result["file"]


def test_checksum_mismatch_never_leaves_a_complete_looking_file(tmp_path):
    payload = _zip_bytes()
    with _Server(payload) as server:
        with pytest.raises(UserError, match="checksum mismatch"):
            download("x", tmp_path, dataset=_dataset(server.url, payload, md5="0" * 32))
    assert not (tmp_path / "NCT-MINI.zip").exists() and not (tmp_path / "NCT-MINI").exists()
    assert (tmp_path / "NCT-MINI.zip.bad").exists()


def test_no_network_says_where_to_put_the_file(tmp_path):
    with socket.socket() as s:                    # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ds = Dataset("pathmnist.npz", f"http://127.0.0.1:{port}/pathmnist.npz", DATASETS["pathmnist"].md5,
                 None, DATASETS["pathmnist"].page, False)
    with pytest.raises(UserError, match=r"by hand from https://zenodo.org/records/10519652 .*pathmnist.npz"):
        download("pathmnist", tmp_path, dataset=ds, timeout=2)
    with pytest.raises(UserError, match="unknown data set"):
        download("imagenet", tmp_path)


def test_registry_has_the_published_checksums():
    assert DATASETS["pathmnist"].md5 == "a8b06965200029087d5bd730944a56c1"
    assert DATASETS["crc-val-he-7k"].md5 == "2fd1651b4f94ebd818ebf90ad2b6ce06"
    assert "records/1214456" in DATASETS["nct-crc-he-100k"].url


@pytest.mark.parametrize("entry", ["../escape.txt", "/abs/escape.txt", "NCT-MINI/../../escape.txt"])
def test_archive_with_escaping_entries_is_refused(tmp_path, entry):
    """zipfile would quietly rewrite these entries to land inside the folder: refused instead."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("NCT-MINI/ADI/a.tif", b"x")
        zf.writestr(entry, b"escape")
    payload = buf.getvalue()
    to = tmp_path / "to"
    with _Server(payload) as server:
        with pytest.raises(UserError, match="unsafe path in archive"):
            download("x", to, dataset=_dataset(server.url, payload))
    assert not (to / "NCT-MINI").exists() and not list(tmp_path.rglob("escape.txt"))
