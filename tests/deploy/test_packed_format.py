"""The packed file: round trip, what it holds, its size, and a clear error for every file it cannot read."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
import torch

from torchbop.deploy import export, load_packed
from torchbop.deploy.packed_format import FORMAT_VERSION, MAGIC, read_packed, write_packed
from torchbop.errors import UserError
from torchbop.models import BinaryNet, MnistBNN


@pytest.fixture
def packed_file(tmp_path):
    torch.manual_seed(0)
    return export(MnistBNN().eval(), tmp_path / "mnist.tbop", input_shape=[1, 28, 28])


def rewrite_header(path, change):
    """Rewrite the JSON header of ``path`` through ``change(header)``, keeping the payload."""
    blob = path.read_bytes()
    length = struct.unpack_from("<I", blob, 12)[0]
    header = json.loads(blob[16 : 16 + length])
    change(header)
    text = json.dumps(header).encode()
    path.write_bytes(blob[:12] + struct.pack("<I", len(text)) + text + blob[16 + length :])


class TestContent:
    def test_round_trip_of_tensors(self, tmp_path):
        tensors = {
            "bits": torch.arange(10, dtype=torch.uint8),
            "x": torch.randn(3, 4),
            "h": torch.randn(2).half(),
            "empty": torch.zeros(0, 5),
        }
        write_packed(tmp_path / "t", {"note": [1, "a"]}, tensors)
        header, read = read_packed(tmp_path / "t")
        assert header["note"] == [1, "a"] and header["version"] == FORMAT_VERSION
        assert read.keys() == tensors.keys()
        for name, tensor in tensors.items():
            assert torch.equal(read[name], tensor) and read[name].dtype == tensor.dtype

    def test_the_file_holds_the_network_and_nothing_else(self, packed_file):
        header, tensors = read_packed(packed_file)
        kinds = [node["op"] for node in header["network"]["nodes"]]
        assert kinds == ["channels_last"] + ["binary_conv2d", "max_pool2d", "batch_norm"] * 3 + [
            "flatten",
            "binary_linear",
            "batch_norm",
            "binary_linear",
            "batch_norm",
        ]
        suffixes = {name.rsplit(".", 1)[1] for name in tensors}
        assert suffixes == {"weight_bits", "running_mean", "running_var", "bias"}  # no num_batches_tracked
        bits = sum(t.numel() for name, t in tensors.items() if name.endswith("weight_bits"))
        assert bits == sum((n + 7) // 8 for n in (288, 18432, 36864, 36864, 640))  # 8 weights to a byte

    def test_binarynet_file_is_over_25x_smaller_than_its_fp32_weights(self, tmp_path):
        model = BinaryNet().eval()  # full width: 10,352,000 binary weights
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        size = export(model, tmp_path / "binarynet.tbop").stat().st_size
        # 1,294,000 bytes of weight bits + 11,550 float32 batch-norm numbers + header
        assert 1_294_000 + 4 * 11_550 < size < 1_294_000 + 4 * 11_550 + 64 * 64 + 20_000
        assert buffer.getbuffer().nbytes / size > 25


class TestWriting:
    def test_never_overwrites_without_overwrite(self, packed_file):
        before = packed_file.read_bytes()
        with pytest.raises(UserError, match="already exists.*--overwrite"):
            export(MnistBNN().eval(), packed_file)
        assert packed_file.read_bytes() == before
        export(MnistBNN().eval(), packed_file, overwrite=True)
        assert packed_file.read_bytes() != before

    def test_no_temporary_file_left(self, packed_file):
        assert [p.name for p in packed_file.parent.iterdir()] == [packed_file.name]


class TestBadFiles:
    """Every unreadable file is a UserError naming the file and the fix."""

    def check(self, path, match):
        with pytest.raises(UserError, match=match) as info:
            load_packed(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
        assert "torchbop export" in message

    def test_missing(self, tmp_path):
        self.check(tmp_path / "nothing.tbop", "no such file")

    def test_wrong_magic(self, tmp_path):
        torch.save({"a": torch.zeros(2)}, tmp_path / "model.pt")
        self.check(tmp_path / "model.pt", "not a torchbop packed model")

    def test_empty(self, tmp_path):
        (tmp_path / "empty").write_bytes(b"")
        self.check(tmp_path / "empty", "not a torchbop packed model")

    def test_other_version(self, packed_file):
        blob = bytearray(packed_file.read_bytes())
        blob[8:12] = struct.pack("<I", FORMAT_VERSION + 1)
        packed_file.write_bytes(bytes(blob))
        self.check(packed_file, f"format version {FORMAT_VERSION + 1}.*reads versions 1 and {FORMAT_VERSION}")

    @pytest.mark.parametrize("keep", [12, 40, -1])
    def test_truncated(self, packed_file, keep):
        blob = packed_file.read_bytes()
        packed_file.write_bytes(blob[:keep] if keep > 0 else blob[: keep - 100])
        self.check(packed_file, "truncated|not a torchbop")

    def test_corrupt_payload(self, packed_file):
        blob = bytearray(packed_file.read_bytes())
        blob[-5] ^= 0xFF
        packed_file.write_bytes(bytes(blob))
        self.check(packed_file, "CRC-32")

    def test_corrupt_header(self, packed_file):
        blob = bytearray(packed_file.read_bytes())
        blob[16] = ord("x")
        packed_file.write_bytes(bytes(blob))
        self.check(packed_file, "corrupt header")

    @pytest.mark.parametrize("key", ["tensors", "payload_crc32", "network"])
    def test_missing_header_key(self, packed_file, key):
        rewrite_header(packed_file, lambda header: header.pop(key))
        self.check(packed_file, f"'{key}' is missing or malformed")

    def test_missing_tensor(self, packed_file):
        rewrite_header(packed_file, lambda header: header["tensors"].pop("features_3.weight_bits"))
        self.check(packed_file, "missing key or tensor 'features_3.weight_bits'")

    def test_missing_layer_key(self, packed_file):
        rewrite_header(packed_file, lambda header: header["network"]["nodes"][1]["attrs"].pop("stride"))
        self.check(packed_file, "missing key or tensor 'stride'")

    def test_malformed_tensor_entry(self, packed_file):
        rewrite_header(packed_file, lambda header: header["tensors"]["features_3.weight_bits"].update(nbytes=7))
        self.check(packed_file, "malformed entry for tensor 'features_3.weight_bits'")

    def test_crc_checked_over_the_payload(self, packed_file):
        header, _ = read_packed(packed_file)
        blob = packed_file.read_bytes()
        assert zlib.crc32(blob[-header["payload_bytes"] :]) == header["payload_crc32"]
        assert blob[:8] == MAGIC
