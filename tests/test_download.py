"""MVTec AD download against a local HTTP server on 127.0.0.1 serving an archive the test builds."""

from __future__ import annotations

import hashlib
import http.server
import socket
import tarfile
import threading

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from defectlab.data import download
from defectlab.cli import main


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    seen_ranges: list = []

    def do_GET(self):
        range_header = self.headers.get("Range")
        body, status = self.payload, 200
        if range_header:
            type(self).seen_ranges.append(range_header)
            start = int(range_header.split("=")[1].split("-")[0])
            body, status = self.payload[start:], 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def build_archive(folder):
    """A tiny MVTec-layout .tar.xz with two categories under a top folder."""
    source = folder / "source" / "mvtec_anomaly_detection"
    for category in ("carpet", "leather"):
        for relative in ("train/good/000.png", "test/good/000.png", "test/cut/000.png"):
            path = source / category / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
        mask = source / category / "ground_truth" / "cut" / "000_mask.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(mask)
    (source / "readme.txt").write_text("test archive")
    archive = folder / "mvtec_anomaly_detection.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(source, arcname="mvtec_anomaly_detection")
    return archive.read_bytes()


@pytest.fixture
def archive_server(tmp_path):
    payload = build_archive(tmp_path)
    handler = type("Handler", (RangeHandler,), {"payload": payload, "seen_ranges": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/mvtec_anomaly_detection.tar.xz"
    yield url, payload, handler
    server.shutdown()


def test_right_checksum_extracts_the_layout(archive_server, tmp_path):
    url, payload, _ = archive_server
    target = tmp_path / "data"
    result = CliRunner().invoke(
        main, ["data", "download", "--to", str(target), "--category", "carpet",
               "--url", url, "--sha256", hashlib.sha256(payload).hexdigest()],
    )
    assert result.exit_code == 0, result.output
    assert (target / "carpet" / "train" / "good" / "000.png").is_file()
    assert (target / "carpet" / "ground_truth" / "cut" / "000_mask.png").is_file()
    assert not (target / "leather").exists()  # only the requested category
    assert not list(target.glob(".carpet-*"))  # no staging folder left


def test_wrong_checksum_deletes_the_partial_file(archive_server, tmp_path):
    url, _, _ = archive_server
    target = tmp_path / "data"
    with pytest.raises(download.DownloadError, match="checksum mismatch.*partial file .* was deleted"):
        download.download_mvtec_ad(target, url=url, sha256="0" * 64)
    assert not list(target.glob("*.part")) and not list(target.glob("*.tar.xz"))


def test_interrupted_download_resumes_with_a_range_request(archive_server, tmp_path):
    url, payload, handler = archive_server
    target = tmp_path / "data"
    target.mkdir()
    (target / "mvtec_anomaly_detection.tar.xz.part").write_bytes(payload[:100])
    written = download.download_mvtec_ad(target, url=url, sha256=hashlib.sha256(payload).hexdigest())
    assert written == ["carpet", "leather"]
    assert handler.seen_ranges == ["bytes=100-"]
    assert (target / "mvtec_anomaly_detection.tar.xz").read_bytes() == payload


def test_unreachable_host_gives_one_line_error(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    result = CliRunner().invoke(
        main, ["data", "download", "--to", str(tmp_path), "--url", f"http://127.0.0.1:{closed_port}/x.tar.xz"]
    )
    assert result.exit_code == 1
    assert "cannot download" in result.output and "offline?" in result.output
    assert "Traceback" not in result.output
