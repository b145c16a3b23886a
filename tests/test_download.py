"""The CIFAR-10 download against a real HTTP server on 127.0.0.1 serving tiny generated tarballs.

Nothing of cnnkit's is replaced: the server is Python's http.server in a thread, the tarball is a
tiny `cifar-10-python.tar.gz` made from conftest's batch files, and the URL/md5 reach cnnkit the
documented ways (function arguments, env CNNKIT_CIFAR10_URL / CNNKIT_CIFAR10_MD5).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest
from conftest import make_batches_dir
from http_files import Server, md5
from typer.testing import CliRunner

from cnnkit.cli import app
from cnnkit.data import choose_data_root, download_cifar10, fetch_cifar10, load_cifar10
from cnnkit.errors import DataError

HOW_TO = ("--data-root DIR", "CNNKIT_DATA", "data.root")


def make_tarball(tmp: Path, *, extra: dict[str, bytes] | None = None) -> bytes:
    """A cifar-10-python.tar.gz of 1 train + 1 test image per class, laid out like the real one."""
    folder = make_batches_dir(tmp / "src", n_train_per_class=1, n_test_per_class=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(folder, arcname="cifar-10-batches-py")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def tarball(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_tarball(tmp_path_factory.mktemp("tarball"))



def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_download_checks_unpacks_and_reports_progress(tmp_path: Path, server: Server, tarball: bytes) -> None:
    server.files["/c.tar.gz"] = tarball
    seen: list[tuple[int, int | None]] = []
    folder = download_cifar10(tmp_path / "d", url=server.url("/c.tar.gz"), md5=md5(tarball),
                              progress=lambda done, total: seen.append((done, total)))
    assert folder == tmp_path / "d" / "cifar-10-batches-py"
    assert leftovers(tmp_path / "d") == ["cifar-10-batches-py"]  # no tarball, no temporary folder
    assert seen[0] == (0, len(tarball)) and seen[-1] == (len(tarball), len(tarball))
    data = load_cifar10(tmp_path / "d")
    assert (len(data.train), len(data.test)) == (10, 10)


def test_corrupt_download_is_refused_and_nothing_is_left(tmp_path: Path, server: Server, tarball: bytes) -> None:
    damaged = bytearray(tarball)
    damaged[len(damaged) // 2] ^= 0xFF
    server.files["/c.tar.gz"] = bytes(damaged)
    root = tmp_path / "new" / "d"  # neither folder exists yet
    with pytest.raises(DataError) as info:
        download_cifar10(root, url=server.url("/c.tar.gz"), md5=md5(tarball))
    message = str(info.value)
    assert "\n" not in message and "checksum mismatch" in message and md5(tarball) in message
    assert not (tmp_path / "new").exists()  # the folders this download made are gone again


def test_failure_keeps_an_existing_root_as_it_was(tmp_path: Path, server: Server, tarball: bytes) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "mine.txt").write_text("keep")
    server.files["/c.tar.gz"] = tarball
    server.cut = len(tarball) // 3  # the connection drops a third of the way in
    with pytest.raises(DataError, match="connection closed after"):
        download_cifar10(root, url=server.url("/c.tar.gz"), md5=md5(tarball))
    assert leftovers(root) == ["mine.txt"]


def test_archive_without_cifar_is_refused(tmp_path: Path, server: Server) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("cifar-10-batches-py/readme.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    body = buffer.getvalue()
    server.files["/c.tar.gz"] = body
    with pytest.raises(DataError, match="not CIFAR-10.*batches.meta"):
        download_cifar10(tmp_path / "d", url=server.url("/c.tar.gz"), md5=md5(body))
    assert not (tmp_path / "d").exists()


def test_unpacks_only_the_batch_files(tmp_path: Path, server: Server) -> None:
    # A hostile archive: a path out of the folder and a stray top-level file are ignored.
    body = make_tarball(tmp_path / "t", extra={"../escape.txt": b"x", "cifar-10-batches-py/../../up.txt": b"x",
                                                "top.txt": b"x"})
    server.files["/c.tar.gz"] = body
    download_cifar10(tmp_path / "d", url=server.url("/c.tar.gz"), md5=md5(body))
    assert leftovers(tmp_path / "d") == ["cifar-10-batches-py"]
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "up.txt").exists()


def test_http_error_and_no_server_say_why(tmp_path: Path, server: Server) -> None:
    with pytest.raises(DataError, match="HTTP 404"):
        download_cifar10(tmp_path / "d", url=server.url("/missing.tar.gz"), md5="0" * 32)
    with pytest.raises(DataError, match="no network: 127.0.0.1 refused the connection"):
        download_cifar10(tmp_path / "d", url="http://127.0.0.1:9/c.tar.gz", md5="0" * 32)
    assert not (tmp_path / "d").exists()


def test_default_root_is_downloaded_into_via_env(tmp_path: Path, server: Server, tarball: bytes,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/mirror/c.tar.gz"] = tarball
    monkeypatch.setenv("CNNKIT_CIFAR10_URL", server.url("/mirror/c.tar.gz"))
    monkeypatch.setenv("CNNKIT_CIFAR10_MD5", md5(tarball))
    monkeypatch.chdir(tmp_path)
    root = choose_data_root(None, None)
    assert root.is_default and root.path == Path("data")
    data = load_cifar10(root)  # nothing there: fetched, then read like any copy
    assert (len(data.train), len(data.test)) == (10, 10)
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()
    assert fetch_cifar10(root) is None and server.requests == 1  # already there: no second download


def test_named_root_is_not_downloaded_into_unasked(tmp_path: Path, server: Server, tarball: bytes,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/c.tar.gz"] = tarball
    monkeypatch.setenv("CNNKIT_CIFAR10_URL", server.url("/c.tar.gz"))
    monkeypatch.setenv("CNNKIT_CIFAR10_MD5", md5(tarball))
    monkeypatch.setenv("CNNKIT_DATA", str(tmp_path / "named"))
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(choose_data_root(None, None))
    assert server.requests == 0
    load_cifar10(choose_data_root(None, None), download=True)  # data.download: true
    assert server.requests == 1


def test_train_without_data_or_network_is_one_line_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest points CNNKIT_CIFAR10_URL at a closed local port: a machine with no network.
    monkeypatch.chdir(tmp_path)
    config = Path(__file__).resolve().parents[1] / "configs" / "lenet.yaml"
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    for fragment in (str(tmp_path / "data"), "default data root", "download failed", "no network", *HOW_TO):
        assert fragment in lines[0], (fragment, lines[0])
    assert os.listdir(tmp_path) == []  # no ./data left behind, no run folder


def test_data_command_downloads_then_shows_what_is_there(tmp_path: Path, server: Server, tarball: bytes,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    server.files["/c.tar.gz"] = tarball
    monkeypatch.setenv("CNNKIT_CIFAR10_URL", server.url("/c.tar.gz"))
    monkeypatch.setenv("CNNKIT_CIFAR10_MD5", md5(tarball))
    root = tmp_path / "d"
    result = CliRunner().invoke(app, ["data", "--data-root", str(root), "--download"])
    assert result.exit_code == 0, result.output
    assert "downloaded" in result.output and "cifar-10-batches-py" in result.output
    assert "train 10" in result.output and "test 10" in result.output
    again = CliRunner().invoke(app, ["data", "--data-root", str(root), "--download"])
    assert again.exit_code == 0 and "already there" in again.output and server.requests == 1


def test_data_command_without_data_is_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "--data-root", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "does not exist" in result.stderr
