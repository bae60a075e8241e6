"""Data root resolution and the checksummed, atomic download (file:// URLs only: tests never use the network)."""

import hashlib
import http.client
import urllib.request
from pathlib import Path

import pytest

from torchbop.data import (
    ChecksumError,
    DatasetNotFoundError,
    DatasetUnavailableError,
    DownloadError,
    download_file,
    resolve_data_dir,
)
from torchbop.data import paths as paths_module
from torchbop.data.paths import RemoteFile, ensure_files


class TestResolveDataDir:
    def test_explicit_argument_wins(self, monkeypatch, tmp_path):
        monkeypatch.setenv("TORCHBOP_DATA", "/from/env")
        assert resolve_data_dir(tmp_path) == tmp_path

    def test_environment_next(self, monkeypatch):
        monkeypatch.setenv("TORCHBOP_DATA", "/from/env")
        assert resolve_data_dir() == Path("/from/env")

    @pytest.mark.parametrize("value", [None, ""])
    def test_cache_last(self, monkeypatch, tmp_path, value):
        monkeypatch.setenv("HOME", str(tmp_path))
        if value is None:
            monkeypatch.delenv("TORCHBOP_DATA", raising=False)
        else:
            monkeypatch.setenv("TORCHBOP_DATA", value)
        assert resolve_data_dir() == tmp_path / ".cache" / "torchbop"

    def test_user_expanded(self, monkeypatch, tmp_path):
        monkeypatch.setenv("HOME", str(tmp_path))
        assert resolve_data_dir("~/datasets") == tmp_path / "datasets"


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "server" / "payload.bin"
    path.parent.mkdir()
    path.write_bytes(b"some bytes" * 1000)
    return path


class TestDownloadFile:
    def test_downloads_and_verifies(self, tmp_path, source):
        dest = tmp_path / "out" / "deep" / "payload.bin"
        md5 = hashlib.md5(source.read_bytes()).hexdigest()
        assert download_file(source.as_uri(), dest, md5) == dest
        assert dest.read_bytes() == source.read_bytes()
        assert list(dest.parent.iterdir()) == [dest]  # no temporary file left

    def test_checksum_mismatch_leaves_nothing(self, tmp_path, source):
        dest = tmp_path / "out" / "payload.bin"
        with pytest.raises(
            ChecksumError, match=f"Checksum mismatch for {source.as_uri()}: md5 [0-9a-f]{{32}}, expected 0{{32}}"
        ):
            download_file(source.as_uri(), dest, "0" * 32)
        assert not dest.parent.exists()  # the folder it created for dest is removed again, being empty

    def test_mismatch_does_not_clobber_an_existing_file(self, tmp_path, source):
        dest = tmp_path / "payload.bin"
        dest.write_bytes(b"previous")
        with pytest.raises(ChecksumError):
            download_file(source.as_uri(), dest, "0" * 32)
        assert dest.read_bytes() == b"previous"

    def test_unreachable_url(self, tmp_path):
        missing = (tmp_path / "nowhere.bin").as_uri()
        with pytest.raises(DownloadError, match=f"Could not download {missing}"):
            download_file(missing, tmp_path / "out.bin", "0" * 32)
        assert list(tmp_path.iterdir()) == []

    def test_failure_keeps_a_folder_that_existed(self, tmp_path):
        (tmp_path / "data").mkdir()
        with pytest.raises(DownloadError):
            download_file((tmp_path / "nowhere.bin").as_uri(), tmp_path / "data" / "a" / "b" / "out.bin", "0" * 32)
        assert list(tmp_path.iterdir()) == [tmp_path / "data"] and list((tmp_path / "data").iterdir()) == []

    def test_progress_reports_bytes_and_total(self, tmp_path, source, monkeypatch):
        monkeypatch.setattr(paths_module, "_CHUNK", 4096)
        calls = []
        md5 = hashlib.md5(source.read_bytes()).hexdigest()
        download_file(
            source.as_uri(), tmp_path / "out.bin", md5, progress=lambda done, total: calls.append((done, total))
        )
        size = source.stat().st_size
        assert calls == [(min(n, size), size) for n in range(4096, size + 4096, 4096)]

    def test_transfer_cut_short(self, tmp_path, monkeypatch):
        class Response:
            headers = {"Content-Length": "100"}

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def read(self, n):
                raise http.client.IncompleteRead(b"x" * 10, 90)

        monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Response())
        with pytest.raises(
            DownloadError,
            match="Could not download https://example.org/x to .*: the transfer failed after 0 B .*IncompleteRead",
        ):
            download_file("https://example.org/x", tmp_path / "d" / "x", "0" * 32)
        assert list(tmp_path.iterdir()) == []

    def test_network_is_guarded(self, tmp_path):
        # The autouse guard is what keeps this suite offline; make sure it is in force.
        with pytest.raises(AssertionError, match="tried to reach the network"):
            download_file("https://example.org/x", tmp_path / "x", "0" * 32)


class TestEnsureFiles:
    def test_present_files_need_no_download(self, tmp_path):
        (tmp_path / "a").write_bytes(b"")
        remote = RemoteFile("a", "https://example.org/", "0" * 32)
        assert ensure_files(tmp_path, [remote], dataset="x", download=True, data_dir_source="test") == [tmp_path / "a"]

    def test_missing_without_download(self, tmp_path):
        (tmp_path / "a").write_bytes(b"")
        files = [RemoteFile(n, "https://example.org/data/", "0" * 32) for n in ("a", "b", "c")]
        with pytest.raises(
            DatasetNotFoundError,
            match=r"toy: missing b, c in .*download=True to fetch them from "
            r"https://example\.org/data/",
        ):
            ensure_files(tmp_path, files, dataset="toy", download=False, data_dir_source="test")

    def test_downloads_only_missing(self, tmp_path, source):
        folder = tmp_path / "data"
        folder.mkdir()
        (folder / "kept.bin").write_bytes(b"local")
        md5 = hashlib.md5(source.read_bytes()).hexdigest()
        files = [
            RemoteFile("kept.bin", source.parent.as_uri(), "0" * 32),
            RemoteFile("payload.bin", source.parent.as_uri(), md5),
        ]
        paths = ensure_files(folder, files, dataset="toy", download=True, data_dir_source="test")
        assert [p.read_bytes() for p in paths] == [b"local", source.read_bytes()]

    def test_download_failure_is_one_clear_error(self, tmp_path):
        server = (tmp_path / "offline").as_uri() + "/"
        files = [RemoteFile(n, server, "0" * 32) for n in ("a.gz", "b.gz")]
        folder = tmp_path / "root" / "toy"
        with pytest.raises(DatasetUnavailableError) as info:
            ensure_files(
                folder, files, dataset="toy", download=True, data_dir_source="the data_dir argument", progress=False
            )
        message = str(info.value)
        for name in ("a.gz", "b.gz"):
            assert f"  {server}{name}  (md5 {'0' * 32})\n    -> {folder / name}" in message
        assert f"The data root {tmp_path / 'root'} comes from the data_dir argument" in message
        assert not (tmp_path / "root").exists()
