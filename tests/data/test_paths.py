"""Data root resolution and the checksummed, atomic download (file:// URLs only: tests never use the network)."""

import hashlib
from pathlib import Path

import pytest

from torchbop.data import ChecksumError, DatasetNotFoundError, download_file, resolve_data_dir
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
        with pytest.raises(ChecksumError, match=f"Checksum mismatch for {source.as_uri()}: md5 [0-9a-f]{{32}}, "
                                                f"expected 0{{32}}"):
            download_file(source.as_uri(), dest, "0" * 32)
        assert list(dest.parent.iterdir()) == []

    def test_mismatch_does_not_clobber_an_existing_file(self, tmp_path, source):
        dest = tmp_path / "payload.bin"
        dest.write_bytes(b"previous")
        with pytest.raises(ChecksumError):
            download_file(source.as_uri(), dest, "0" * 32)
        assert dest.read_bytes() == b"previous"

    def test_unreachable_url(self, tmp_path):
        missing = (tmp_path / "nowhere.bin").as_uri()
        with pytest.raises(OSError, match=f"Could not download {missing}"):
            download_file(missing, tmp_path / "out.bin", "0" * 32)
        assert not (tmp_path / "out.bin").exists()

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
        with pytest.raises(DatasetNotFoundError, match=r"toy: missing b, c in .*download=True to fetch them from "
                                                       r"https://example\.org/data/"):
            ensure_files(tmp_path, files, dataset="toy", download=False, data_dir_source="test")

    def test_downloads_only_missing(self, tmp_path, source):
        folder = tmp_path / "data"
        folder.mkdir()
        (folder / "kept.bin").write_bytes(b"local")
        md5 = hashlib.md5(source.read_bytes()).hexdigest()
        files = [RemoteFile("kept.bin", source.parent.as_uri(), "0" * 32),
                 RemoteFile("payload.bin", source.parent.as_uri(), md5)]
        paths = ensure_files(folder, files, dataset="toy", download=True, data_dir_source="test")
        assert [p.read_bytes() for p in paths] == [b"local", source.read_bytes()]
