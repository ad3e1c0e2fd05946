"""Verified downloads against a real HTTP server on 127.0.0.1 (started and stopped by the tests)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import torch

from prunekit.data import download_verified, load_dataset
from prunekit.data.mnist import MNIST
from prunekit.errors import ChecksumError, DataError

PAYLOAD = bytes(range(256)) * 40


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        if self.path == "/truncated.bin":
            # announce more bytes than are sent, then close: what a dropped connection looks like
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD) + 1000))
            self.end_headers()
            self.wfile.write(PAYLOAD)
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    served = tmp_path_factory.mktemp("served")
    (served / "good.bin").write_bytes(PAYLOAD)
    (served / "corrupt.bin").write_bytes(PAYLOAD[:-1] + b"\x00")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


GOOD_MD5 = hashlib.md5(PAYLOAD).hexdigest()
GOOD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


def test_good_file_is_accepted(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    dest = download_verified(
        f"{url}/good.bin", tmp_path / "sub" / "good.bin", md5=GOOD_MD5, sha256=GOOD_SHA256
    )
    assert dest == tmp_path / "sub" / "good.bin" and dest.read_bytes() == PAYLOAD
    assert [p.name for p in dest.parent.iterdir()] == ["good.bin"]


def test_corrupt_file_is_rejected_and_removed(server: tuple[str, Path], tmp_path: Path) -> None:
    url, served = server
    actual_md5 = hashlib.md5((served / "corrupt.bin").read_bytes()).hexdigest()
    actual_sha = hashlib.sha256((served / "corrupt.bin").read_bytes()).hexdigest()
    with pytest.raises(
        ChecksumError,
        match=rf"download of {url}/corrupt.bin is corrupt: md5 expected {GOOD_MD5}, "
        rf"got {actual_md5}; the partial file was deleted",
    ):
        download_verified(f"{url}/corrupt.bin", tmp_path / "corrupt.bin", md5=GOOD_MD5)
    with pytest.raises(ChecksumError, match=f"sha256 expected {GOOD_SHA256}, got {actual_sha}"):
        download_verified(f"{url}/corrupt.bin", tmp_path / "corrupt.bin", sha256=GOOD_SHA256)
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_is_rejected_and_removed(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(
        ChecksumError, match=rf"truncated: received {len(PAYLOAD)} of {len(PAYLOAD) + 1000} bytes"
    ):
        download_verified(f"{url}/truncated.bin", tmp_path / "t.bin")
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_data_error_naming_the_url(server: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(DataError, match=rf"download of {url}/missing.bin failed: HTTP Error 404"):
        download_verified(f"{url}/missing.bin", tmp_path / "m.bin")
    assert list(tmp_path.iterdir()) == []


def test_load_dataset_downloads_from_a_mirror(
    server: tuple[str, Path], tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, served = server
    (served / "mnist").mkdir(exist_ok=True)
    for file_name in MNIST.files("test"):
        (served / "mnist" / file_name).write_bytes((shared_data / "mnist" / file_name).read_bytes())
    monkeypatch.setenv("PRUNEKIT_MIRROR", url)
    test = load_dataset("mnist", "test", root=tmp_path)
    assert test.labels[:4].tolist() == [7, 2, 1, 0] and len(test) == 10000
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(MNIST.files("test"))
    # a mirror serving a wrong file is refused by the official checksum
    (served / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"tampered")
    with pytest.raises(ChecksumError, match=r"md5 expected ec29112dd5afa0611ce80d1b7f02629c"):
        load_dataset("mnist", "test", root=tmp_path / "other", mirror=url)
    assert not (tmp_path / "other" / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert torch.equal(load_dataset("mnist", "test", root=tmp_path, download=False).labels, test.labels)
