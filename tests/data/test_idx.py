"""The IDX reader on generated files: good ones round-trip, every kind of damage is a ValueError naming the file."""

import gzip

import pytest
import torch

from torchbop.data.idx import parse_idx, read_idx


@pytest.fixture
def images():
    return torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class TestGoodFiles:
    @pytest.mark.parametrize("gz", [True, False])
    def test_images_round_trip(self, tmp_path, write_idx, images, gz):
        path = write_idx(tmp_path / ("x.gz" if gz else "x"), images, gz=gz)
        out = read_idx(path, ndim=3)
        assert out.dtype == torch.uint8
        assert torch.equal(out, images)

    def test_labels_round_trip(self, tmp_path, write_idx):
        labels = torch.tensor([3, 1, 4, 1, 5, 9], dtype=torch.uint8)
        assert torch.equal(read_idx(write_idx(tmp_path / "l.gz", labels), ndim=1), labels)

    def test_gzip_recognised_by_content_without_suffix(self, tmp_path, write_idx, images):
        path = write_idx(tmp_path / "images-no-suffix", images, gz=True)
        assert torch.equal(read_idx(path), images)

    def test_content_md5_checked_on_uncompressed_bytes(self, tmp_path, write_idx, make_idx, images):
        import hashlib

        md5 = hashlib.md5(make_idx(images)).hexdigest()
        path = write_idx(tmp_path / "x.gz", images)
        assert torch.equal(read_idx(path, expected_md5=md5), images)
        with pytest.raises(ValueError, match=r"x\.gz: content md5 .* differs"):
            read_idx(path, expected_md5="0" * 32)

    def test_empty_dimension(self):
        header = bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        assert parse_idx(header).shape == (0, 28, 28)


class TestDamagedFiles:
    def test_truncated(self, tmp_path, make_idx, images):
        path = tmp_path / "trunc.gz"
        path.write_bytes(gzip.compress(make_idx(images)[:-100]))
        with pytest.raises(ValueError, match=r"trunc\.gz: truncated IDX file: header declares shape \[5, 28, 28\]"):
            read_idx(path)

    def test_truncated_header(self, tmp_path, make_idx, images):
        path = tmp_path / "hdr"
        path.write_bytes(make_idx(images)[:10])
        with pytest.raises(ValueError, match="hdr: truncated IDX header"):
            read_idx(path)

    @pytest.mark.parametrize("content", [b"", b"\x00\x00"])
    def test_shorter_than_magic(self, tmp_path, content):
        path = tmp_path / "tiny"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="tiny: not an IDX file"):
            read_idx(path)

    def test_oversize(self, tmp_path, make_idx, images):
        path = tmp_path / "big.gz"
        path.write_bytes(gzip.compress(make_idx(images) + b"\x00" * 7))
        with pytest.raises(ValueError, match=r"big\.gz: oversize IDX file.*\(7 extra\)"):
            read_idx(path)

    def test_labels_file_where_images_expected(self, tmp_path, write_idx):
        path = write_idx(tmp_path / "labels.gz", torch.zeros(10, dtype=torch.uint8))
        with pytest.raises(ValueError, match=r"labels\.gz: magic number 2049 .* expected 2051"):
            read_idx(path, ndim=3)

    @pytest.mark.parametrize(
        "magic, message",
        [
            (bytes([1, 0, 8, 1]), "does not start with two zero bytes"),
            (bytes([0, 0, 0x09, 1]), r"data type 0x09 is not supported"),
            (bytes([0, 0, 0x0D, 1]), r"data type 0x0d is not supported"),
            (bytes([0, 0, 8, 0]), "declares 0 dimensions"),
            (bytes([0, 0, 8, 9]), "declares 9 dimensions"),
        ],
    )
    def test_wrong_magic(self, tmp_path, magic, message):
        path = tmp_path / "bad"
        path.write_bytes(magic + (4).to_bytes(4, "big") + bytes(4))
        with pytest.raises(ValueError, match=f"bad: .*{message}"):
            read_idx(path)

    def test_bad_gzip_crc(self, tmp_path, make_idx, images):
        data = bytearray(gzip.compress(make_idx(images)))
        data[-8] ^= 0xFF  # the CRC32 of the trailer
        path = tmp_path / "crc.gz"
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=r"crc\.gz: corrupt gzip data"):
            read_idx(path)

    def test_bad_gzip_stream(self, tmp_path, make_idx, images):
        data = bytearray(gzip.compress(make_idx(images)))
        data[20:40] = bytes(20)  # garbage in the deflate stream
        path = tmp_path / "stream.gz"
        path.write_bytes(bytes(data))
        with pytest.raises(ValueError, match=r"stream\.gz: corrupt gzip data"):
            read_idx(path)

    def test_truncated_gzip(self, tmp_path, make_idx, images):
        data = gzip.compress(make_idx(images))
        path = tmp_path / "cut.gz"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match=r"cut\.gz: corrupt gzip data \(EOFError"):
            read_idx(path)

    def test_gz_suffix_but_not_gzip(self, tmp_path, make_idx, images):
        path = tmp_path / "plain.gz"
        path.write_bytes(make_idx(images))
        with pytest.raises(ValueError, match=r"plain\.gz: corrupt gzip data"):
            read_idx(path)
