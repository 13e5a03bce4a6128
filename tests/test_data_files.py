"""clearsight.data.files: checksums, downloads from a real local HTTP server, safe tar extraction, the IDX
reader/writer and the restricted unpickler; plus the end-to-end `download=True` paths of `load`."""

from __future__ import annotations

import builtins
import codecs
import gzip
import hashlib
import http.server
import io
import os
import pickle
import socket
import struct
import tarfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import clearsight as cs
from clearsight.data import images, tabular
from clearsight.data.files import (
    check_md5,
    download,
    ensure_file,
    load_array_pickle,
    md5sum,
    read_idx,
    safe_extract_tar,
    write_idx,
)
from clearsight.errors import DataError

T10K = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
OFFICIAL_T10K_MD5 = {"t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                     "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
# md5 of the UCI german.data (risk coded 1 = good, 2 = bad), as listed by other projects that download it
UCI_GERMAN_MD5 = "6b94c2e35480e671545e52a808a8a549"


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------------------------
# a real HTTP server on 127.0.0.1


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        route = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        if route is None:
            self.send_error(404, "Not Found")
            return
        if route == "garbage":  # not HTTP at all: the client sees a bad status line
            self.wfile.write(b"this is not an HTTP response\r\n\r\n")
            return
        body, declared = route if isinstance(route, tuple) else (route, len(route))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)  # fewer bytes than declared -> the connection is cut short

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


class LocalServer:
    def __init__(self) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.routes = {}  # type: ignore[attr-defined]
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def routes(self) -> dict:
        return self.httpd.routes  # type: ignore[attr-defined]

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # a proxy must not sit between the client and 127.0.0.1
    srv = LocalServer()
    yield srv
    srv.close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.bin"  # nothing listens there any more: connection refused


# --------------------------------------------------------------------------------------------------------------
# checksums


def test_md5sum_equals_hashlib_across_chunk_boundaries(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=10_007, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = _md5(data)
    assert md5sum(path) == expected
    assert md5sum(path, chunk=7) == expected  # many chunks, the last one partial
    assert md5sum(path, chunk=1 << 20) == expected
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit changed
    assert md5sum(path) != expected


def test_check_md5_names_the_file_and_both_checksums(tmp_path):
    path = tmp_path / "some-file.gz"
    path.write_bytes(b"hello")
    check_md5(path, _md5(b"hello"))  # the right checksum passes
    with pytest.raises(DataError) as err:
        check_md5(path, "0" * 32)
    msg = str(err.value)
    assert str(path) in msg and _md5(b"hello") in msg and "0" * 32 in msg and "download again" in msg


# --------------------------------------------------------------------------------------------------------------
# IDX reader / writer


def _idx_bytes(code: int, shape: tuple[int, ...], body: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + body


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(7,), (5, 28, 28), (3, 2, 4, 5), (0, 4)])
def test_idx_round_trip_and_byte_format(tmp_path, compress, shape):
    array = np.random.default_rng(len(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / ("a-idx.gz" if compress else "a-idx")
    write_idx(path, array, compress=compress)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape and np.array_equal(back, array)
    raw = path.read_bytes()
    if compress:
        assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip with a zero timestamp
        raw = gzip.decompress(raw)
    # the IDX layout written out literally: magic 0 0 8 ndim, big-endian uint32 sizes, row-major bytes
    expected = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape) + array.tobytes()
    assert raw == expected


def test_write_idx_is_byte_reproducible_and_uint8_only(tmp_path):
    array = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "c.gz", array.astype(np.int16))
    assert not (tmp_path / "c.gz").exists()


@pytest.mark.parametrize(("code", "dtype"), [(0x09, ">i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"),
                                             (0x0E, ">f8")])
def test_read_idx_other_element_types_big_endian(tmp_path, code, dtype):
    values = np.array([[-3, 0, 7], [100, -100, 1]]).astype(dtype)
    path = tmp_path / "x-idx"
    path.write_bytes(_idx_bytes(code, (2, 3), values.tobytes()))  # IDX is big-endian
    back = read_idx(path)
    assert back.dtype.isnative and back.dtype.kind == np.dtype(dtype).kind
    assert back.tolist() == [[-3, 0, 7], [100, -100, 1]]


@pytest.mark.parametrize("content", [
    b"",
    b"\x00\x00",
    b"\x01\x00\x08\x01\x00\x00\x00\x02\x01\x02",  # first byte not 0
    b"\x00\x01\x08\x01\x00\x00\x00\x02\x01\x02",  # second byte not 0
    b"\x00\x00\x07\x01\x00\x00\x00\x02\x01\x02",  # unknown element type
    b"PK\x03\x04 this is a zip file",
])
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_bad_magic_names_the_file(tmp_path, content, compress):
    path = tmp_path / ("bad-idx.gz" if compress else "bad-idx")
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match="bad magic") as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_truncated_header_names_the_file(tmp_path, compress):
    content = b"\x00\x00\x08\x03" + struct.pack(">2I", 10, 28)  # 3 dimensions announced, 2 sizes given
    path = tmp_path / ("t-idx.gz" if compress else "t-idx")
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("n_body", [5, 7, 0])
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_wrong_body_size_names_the_file(tmp_path, n_body, compress):
    content = _idx_bytes(0x08, (2, 3), bytes(range(n_body)))  # the header says 6 bytes
    path = tmp_path / ("s-idx.gz" if compress else "s-idx")
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(DataError) as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and f"holds {n_body} data bytes" in msg and "says 6" in msg


def test_read_idx_corrupted_or_cut_gzip_is_a_data_error(tmp_path):
    array = (np.arange(4000) % 253).astype(np.uint8).reshape(4, 1000)
    good = tmp_path / "good-idx.gz"
    write_idx(good, array)
    raw = good.read_bytes()
    cases = {
        "cut-idx.gz": raw[: len(raw) // 2],  # download cut short
        "notgz-idx.gz": _idx_bytes(0x08, (4, 1000), array.tobytes()),  # named .gz, not compressed
    }
    flipped = bytearray(raw)
    flipped[30] ^= 0xFF  # inside the deflate stream
    flipped[31] ^= 0xFF
    cases["flipped-idx.gz"] = bytes(flipped)
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError) as err:
            read_idx(path)
        assert str(path) in str(err.value), name
    # the flipped file is really broken at the zlib level (what read_idx used to let escape)
    with pytest.raises(zlib.error):
        gzip.decompress(bytes(flipped))


# --------------------------------------------------------------------------------------------------------------
# download() from a real HTTP server


def test_download_fetches_and_verifies(server, tmp_path):
    content = np.random.default_rng(1).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
    server.routes["/d/file.bin"] = content
    dest = tmp_path / "sub" / "file.bin"  # the folder is created
    assert download([server.url + "/d/file.bin"], dest, _md5(content)) == dest
    assert dest.read_bytes() == content
    assert _all_files(tmp_path) == ["sub", "sub/file.bin"]  # no temporary file left behind
    assert server.requests == ["/d/file.bin"]


def test_download_wrong_checksum_leaves_nothing(server, tmp_path):
    server.routes["/file.bin"] = b"not the file you are looking for"
    dest = tmp_path / "dl" / "file.bin"
    with pytest.raises(DataError) as err:
        download([server.url + "/file.bin"], dest, "0123456789abcdef0123456789abcdef")
    msg = str(err.value)
    assert "file.bin" in msg and _md5(b"not the file you are looking for") in msg
    assert list((tmp_path / "dl").iterdir()) == []  # neither the file nor a .part temp file


def test_download_falls_back_to_the_next_mirror(server, tmp_path):
    content = b"the real content " * 1000
    server.routes["/second/file.bin"] = content
    server.routes["/cut/file.bin"] = (content[:100], len(content))  # connection closed after 100 bytes
    server.routes["/wrong/file.bin"] = content[::-1]  # served fine, wrong checksum
    server.routes["/garbage/file.bin"] = "garbage"  # not an HTTP response
    urls = [server.url + "/first/file.bin",  # 404
            _closed_port_url(),  # connection refused
            server.url + "/cut/file.bin", server.url + "/wrong/file.bin", server.url + "/garbage/file.bin",
            server.url + "/second/file.bin", server.url + "/never/file.bin"]
    dest = tmp_path / "file.bin"
    assert download(urls, dest, _md5(content)) == dest
    assert dest.read_bytes() == content
    assert server.requests == ["/first/file.bin", "/cut/file.bin", "/wrong/file.bin", "/garbage/file.bin",
                               "/second/file.bin"]  # in order, and it stops at the first good one
    assert _all_files(tmp_path) == ["file.bin"]


def test_download_all_mirrors_failing_lists_every_failure(server, tmp_path):
    server.routes["/wrong/file.bin"] = b"xyz"
    urls = [server.url + "/missing/file.bin", server.url + "/wrong/file.bin"]
    with pytest.raises(DataError) as err:
        download(urls, tmp_path / "file.bin", _md5(b"abc"))
    msg = str(err.value)
    assert "could not download file.bin" in msg and "404" in msg and urls[0] in msg and urls[1] in msg
    assert _md5(b"xyz") in msg
    assert list(tmp_path.iterdir()) == []


def test_ensure_file_present_missing_and_no_checksum(tmp_path):
    path = tmp_path / "ds" / "data.bin"
    with pytest.raises(DataError) as err:
        ensure_file(path, _md5(b"abc"), ["http://127.0.0.1:9/x"], download_ok=False, how="Put data.bin in ds.")
    msg = str(err.value)
    assert f"missing {path}" in msg and "Put data.bin in ds." in msg and "download=True" in msg
    assert not path.parent.exists()  # nothing attempted
    with pytest.raises(DataError, match="no checksum"):
        ensure_file(path, None, [], download_ok=True, how="")
    path.parent.mkdir()
    path.write_bytes(b"abc")
    assert ensure_file(path, _md5(b"abc"), [], download_ok=False, how="") == path
    with pytest.raises(DataError, match="checksum mismatch") as err:
        ensure_file(path, _md5(b"abd"), [], download_ok=True, how="")
    assert str(path) in str(err.value)
    assert path.read_bytes() == b"abc"  # a refused file is reported, not deleted
    assert ensure_file(path, _md5(b"abd"), [], download_ok=False, how="", verify_present=False) == path


def _small_t10k() -> dict[str, bytes]:
    """Two files in the official t10k format (5 random images and their labels), written here."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    return {T10K[0]: gzip.compress(struct.pack(">HBB3I", 0, 8, 3, 5, 28, 28) + images.tobytes()),
            T10K[1]: gzip.compress(struct.pack(">HBBI", 0, 8, 1, 5) + labels.tobytes())}


def test_load_mnist_download_end_to_end_with_written_files(server, tmp_path, monkeypatch):
    files = _small_t10k()
    for name, blob in files.items():
        server.routes[f"/mirror2/{name}"] = blob
    monkeypatch.setitem(images.IDX_SOURCES["mnist"], "mirrors", [server.url + "/mirror1/", server.url + "/mirror2/"])
    monkeypatch.setitem(images.IDX_SOURCES["mnist"], "md5", {n: _md5(b) for n, b in files.items()})
    root = tmp_path / "root"
    ds = cs.data.load("mnist", split="test", root=root, download=True)
    assert server.requests == [f"/mirror{m}/{name}" for name in T10K for m in (1, 2)]  # the first mirror 404s
    assert _all_files(root) == ["mnist", *(f"mnist/{n}" for n in T10K)]
    pixels = np.frombuffer(gzip.decompress(files[T10K[0]])[16:], dtype=np.uint8).reshape(5, 1, 28, 28)
    assert torch.equal(ds.x, torch.from_numpy(pixels.astype(np.float32) / 255))
    assert ds.y.tolist() == list(gzip.decompress(files[T10K[1]])[8:])
    again = cs.data.load("mnist", split="test", root=root, download=True)  # present now: no new request
    assert len(server.requests) == 4 and torch.equal(again.x, ds.x)
    # the two files swapped on the mirror: each has the other's checksum, both are refused, nothing is kept
    for name in T10K:
        server.routes[f"/m/{name}"] = files[T10K[1 - T10K.index(name)]]
    monkeypatch.setitem(images.IDX_SOURCES["mnist"], "mirrors", [server.url + "/m/"])
    with pytest.raises(DataError) as err:
        cs.data.load("mnist", split="test", root=tmp_path / "other", download=True)
    assert T10K[0] in str(err.value) and _md5(files[T10K[0]]) in str(err.value)
    assert list((tmp_path / "other" / "mnist").iterdir()) == []


@pytest.mark.shared_data
def test_load_mnist_download_end_to_end(server, tmp_path, shared_data, monkeypatch):
    for name in T10K:
        server.routes[f"/mirror2/{name}"] = (shared_data / "mnist" / name).read_bytes()
    monkeypatch.setitem(images.IDX_SOURCES["mnist"], "mirrors",
                        [server.url + "/mirror1/", server.url + "/mirror2/"])  # the first one 404s
    root = tmp_path / "root"
    ds = cs.data.load("mnist", split="test", root=root, download=True)
    assert server.requests == [f"/mirror{m}/{name}" for name in T10K for m in (1, 2)]
    assert _all_files(root) == ["mnist", *(f"mnist/{n}" for n in T10K)]
    for name in T10K:  # verified against the official checksums, not a patched table
        assert md5sum(root / "mnist" / name) == OFFICIAL_T10K_MD5[name]
    expected_x = read_idx(shared_data / "mnist" / T10K[0])
    expected_y = read_idx(shared_data / "mnist" / T10K[1])
    assert ds.x.shape == (10_000, 1, 28, 28) and ds.name == "mnist" and ds.split == "test"
    assert torch.equal(ds.x, torch.from_numpy(expected_x[:, None].astype(np.float32) / 255))
    assert torch.equal(ds.y, torch.from_numpy(expected_y.astype(np.int64)))
    again = cs.data.load("mnist", split="test", root=root, download=True)  # present now: no new request
    assert len(server.requests) == 4 and torch.equal(again.x, ds.x)


@pytest.mark.shared_data
def test_load_mnist_download_refuses_wrong_content(server, tmp_path, shared_data, monkeypatch):
    for name in T10K:  # the two files swapped: each has the other's checksum
        other = T10K[1 - T10K.index(name)]
        server.routes[f"/m/{name}"] = (shared_data / "mnist" / other).read_bytes()
    monkeypatch.setitem(images.IDX_SOURCES["mnist"], "mirrors", [server.url + "/m/"])
    root = tmp_path / "root"
    with pytest.raises(DataError) as err:
        cs.data.load("mnist", split="test", root=root, download=True)
    assert "t10k-images-idx3-ubyte.gz" in str(err.value) and OFFICIAL_T10K_MD5[T10K[0]] in str(err.value)
    assert list((root / "mnist").iterdir()) == []


def test_load_german_credit_download_verifies_the_uci_file(server, tmp_path, monkeypatch):
    uci = gzip.decompress((tabular.EMBEDDED_DIR / "german.data.gz").read_bytes())
    # a copy that codes bad risk as 0 (as some mirrors do) parses to the same data but is not what UCI serves
    recoded = b"\n".join(line[:-2] + b" 0" if line.endswith(b" 2") else line for line in uci.split(b"\n"))
    assert _md5(uci) == UCI_GERMAN_MD5 and _md5(recoded) != UCI_GERMAN_MD5
    monkeypatch.setattr(tabular, "UCI", server.url + "/ml/")
    server.routes["/ml/statlog/german/german.data"] = recoded
    with pytest.raises(DataError, match="german.data"):  # a download with another checksum is not accepted
        cs.data.load("german-credit", split="train", root=tmp_path / "a", download=True)
    assert not (tmp_path / "a" / "german-credit" / "german.data").exists()
    server.routes["/ml/statlog/german/german.data"] = uci
    for split in ("train", "test"):
        got = cs.data.load("german-credit", split=split, root=tmp_path / "b", download=True)
        ref = cs.data.load("german-credit", split=split)  # the embedded copy
        assert torch.equal(got.x, ref.x) and torch.equal(got.y, ref.y)
    assert (tmp_path / "b" / "german-credit" / "german.data").read_bytes() == uci
    assert server.requests == ["/ml/statlog/german/german.data"] * 2  # the test split reused the file
    # a present copy with the other label coding is read as it is (validated by parsing, not by checksum)
    (tmp_path / "c" / "german-credit").mkdir(parents=True)
    (tmp_path / "c" / "german-credit" / "german.data").write_bytes(recoded)
    got = cs.data.load("german-credit", split="test", root=tmp_path / "c", download=True)
    assert torch.equal(got.y, cs.data.load("german-credit", split="test").y) and len(server.requests) == 2


# --------------------------------------------------------------------------------------------------------------
# safe tar extraction


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def test_safe_extract_tar_extracts_files_and_folders(tmp_path):
    folder = tarfile.TarInfo("pkg/sub")
    folder.type = tarfile.DIRTYPE
    archive = _tar(tmp_path / "ok.tar.gz", [_file("pkg/a.bin", b"A" * 10), (folder, None),
                                            _file("pkg/sub/b.txt", b"bee"), _file("./top.txt", b"top")])
    dest = tmp_path / "dest"
    dest.mkdir()
    safe_extract_tar(archive, dest)
    assert _all_files(dest) == ["pkg", "pkg/a.bin", "pkg/sub", "pkg/sub/b.txt", "top.txt"]
    assert (dest / "pkg" / "a.bin").read_bytes() == b"A" * 10 and (dest / "pkg/sub/b.txt").read_bytes() == b"bee"


@pytest.mark.parametrize("kind", ["parent", "nested-parent", "absolute", "symlink", "symlink-inside", "hardlink",
                                  "fifo"])
def test_safe_extract_tar_refuses_escapes_and_writes_nothing(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    bad = {
        "parent": _file("../evil", b"pwned"),
        "nested-parent": _file("pkg/../../outside/evil", b"pwned"),
        "absolute": _file(str(outside / "evil"), b"pwned"),
        "symlink": _link("pkg/evil", str(outside)),
        "symlink-inside": _link("pkg/evil", "a.bin"),  # harmless target, but links are refused outright
        "hardlink": _link("pkg/evil", str(outside / "target"), hard=True),
    }
    if kind == "fifo":
        info = tarfile.TarInfo("pkg/evil")
        info.type = tarfile.FIFOTYPE
        bad["fifo"] = (info, None)
    archive = _tar(tmp_path / "bad.tar.gz", [_file("pkg/a.bin", b"fine"), bad[kind], _file("pkg/z.bin", b"z")])
    dest = tmp_path / "dest"
    dest.mkdir()
    before = _all_files(tmp_path)
    with pytest.raises(DataError) as err:
        safe_extract_tar(archive, dest)
    msg = str(err.value)
    assert str(archive) in msg and "refusing to extract" in msg and repr(bad[kind][0].name) in msg
    assert _all_files(tmp_path) == before  # refused before anything was written, inside or outside dest
    assert not (tmp_path / "evil").exists() and not (outside / "evil").exists()


def test_safe_extract_tar_on_a_broken_archive_is_a_data_error(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive at all" * 20)
    good = _tar(tmp_path / "good.tar.gz", [_file("pkg/a.bin", bytes(range(256)) * 400)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for archive in (junk, cut):
        with pytest.raises(DataError) as err:
            safe_extract_tar(archive, dest)
        assert str(archive) in str(err.value) and "not a valid tar archive" in str(err.value)


# --------------------------------------------------------------------------------------------------------------
# the restricted unpickler


def _batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch 1 of 1", b"labels": rng.integers(0, 10, size=n).tolist(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)], b"empty": b""}


@pytest.mark.parametrize("protocol", [2, 4])
def test_load_array_pickle_reads_plain_data(tmp_path, protocol):
    # (the Python 2 form of the official CIFAR-10 batches is covered in test_data_images.py)
    batch = _batch(5, seed=3)
    content = pickle.dumps(batch, protocol=protocol)
    if protocol == 2:  # Python 3 rebuilds bytes through these two globals, which the unpickler stands in for
        assert b"_codecs\nencode" in content and b"__builtin__\nbytes" in content
    path = tmp_path / "batch"
    path.write_bytes(content)
    back = load_array_pickle(path)
    assert set(back) == set(batch)
    for key in batch:
        if key == b"data":
            assert back[key].dtype == np.uint8 and np.array_equal(back[key], batch[key])
        else:
            assert back[key] == batch[key]


class _Evil:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("attack", ["os.system", "builtins.eval", "builtins.exec", "builtins.open"])
def test_load_array_pickle_refuses_code_and_never_runs_it(tmp_path, attack):
    marker = tmp_path / "side-effect"
    payload = {
        "os.system": _Evil(os.system, f"touch {marker}"),
        "builtins.eval": _Evil(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Evil(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.open": _Evil(builtins.open, str(marker), "w"),
    }[attack]
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": payload, b"labels": [1]}, protocol=2))
    with pytest.raises(DataError) as err:
        load_array_pickle(path)
    assert str(path) in str(err.value) and "is not allowed" in str(err.value)
    assert not marker.exists()


def test_load_array_pickle_codecs_only_rebuild_latin1_bytes(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps({b"x": _Evil(codecs.encode, "abc", "rot13")}, protocol=2))
    with pytest.raises(DataError, match="latin-1"):
        load_array_pickle(path)
    path.write_bytes(pickle.dumps({b"x": _Evil(bytes, 10**12)}, protocol=2))  # would allocate a terabyte
    assert b"__builtin__\nbytes" in path.read_bytes()
    with pytest.raises(DataError, match="argument"):  # the stand-in for bytes() takes no argument
        load_array_pickle(path)
    path.write_bytes(pickle.dumps({b"x": _Evil(codecs.encode, "\xe9t\xe9", "latin1")}, protocol=2))
    assert load_array_pickle(path) == {b"x": b"\xe9t\xe9"}


def test_load_array_pickle_corrupted_stream_is_a_data_error(tmp_path):
    content = pickle.dumps(_batch(3, seed=0), protocol=2)
    cases = {"cut": content[: len(content) // 2], "empty": b"", "text": b"hello world",
             "huge-length": b"\x80\x02X\xff\xff\xff\xff"}  # a unicode string longer than the file
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError) as err:
            load_array_pickle(path)
        assert str(path) in str(err.value), name

