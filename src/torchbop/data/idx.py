"""IDX files (the MNIST format), read into uint8 tensors with every field checked.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the data::

    magic = 0x00 0x00 <type> <ndim>      type 0x08 = unsigned byte; MNIST images 0x00000803 = 2051, labels 2049
    dims  = ndim x uint32 (big-endian)
    data  = prod(dims) bytes, row-major

:func:`read_idx` accepts the raw file or its gzip wrapper (recognised by the gzip magic ``1f 8b`` or a ``.gz``
suffix). Anything that does not match the header exactly (a truncated or oversize file, a wrong magic, a broken
gzip stream) raises :class:`ValueError` naming the file and the problem; the reader never returns partial data.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import torch

from torchbop.data.paths import ChecksumError

__all__ = ["IDX_UBYTE", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "parse_idx", "read_idx"]

IDX_UBYTE = 0x08
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_NDIM = 4


def parse_idx(data: bytes | bytearray, *, name: str = "<bytes>", ndim: int | None = None) -> torch.Tensor:
    """Decode the bytes of an uncompressed IDX file into a uint8 tensor of the shape its header gives.

    Args:
        data: the whole file.
        name: how to call the data in error messages (a path).
        ndim: if given, the number of dimensions the header must declare (3 for images, 1 for labels).

    Raises:
        ValueError: bad magic (leading zero bytes, type other than unsigned byte, ndim), or a length that
            disagrees with the header (truncated or oversize).

    Example:
        >>> header = bytes([0, 0, 0x08, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
        >>> parse_idx(header + bytes(range(6)))
        tensor([[0, 1, 2],
                [3, 4, 5]], dtype=torch.uint8)
    """
    if len(data) < 4:
        raise ValueError(f"{name}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number")
    zero0, zero1, dtype_code, n = data[0], data[1], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"{name}: not an IDX file: magic number {magic:#010x} does not start with two zero bytes")
    if dtype_code != IDX_UBYTE:
        raise ValueError(
            f"{name}: IDX data type {dtype_code:#04x} is not supported (magic {magic}); only unsigned bytes (0x08)"
        )
    if not 1 <= n <= _MAX_NDIM:
        raise ValueError(f"{name}: IDX header declares {n} dimensions (magic {magic}); expected 1 to {_MAX_NDIM}")
    if ndim is not None and n != ndim:
        expected_magic = (IDX_UBYTE << 8) | ndim
        raise ValueError(
            f"{name}: magic number {magic} declares {n} dimension(s); expected {expected_magic} ({ndim} dimension(s))"
        )
    header_len = 4 + 4 * n
    if len(data) < header_len:
        raise ValueError(f"{name}: truncated IDX header: {len(data)} bytes, the header alone needs {header_len}")
    shape = struct.unpack(f">{n}I", data[4:header_len])
    count = 1
    for size in shape:
        count *= size
    expected = header_len + count
    if len(data) < expected:
        raise ValueError(
            f"{name}: truncated IDX file: header declares shape {list(shape)} ({expected} bytes), "
            f"but the data has {len(data)} bytes"
        )
    if len(data) > expected:
        raise ValueError(
            f"{name}: oversize IDX file: header declares shape {list(shape)} ({expected} bytes), "
            f"but the data has {len(data)} bytes ({len(data) - expected} extra)"
        )
    body = bytearray(memoryview(data)[header_len:])
    if count == 0:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(body, dtype=torch.uint8).reshape(shape)


def _read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it when it is gzip; a broken gzip stream raises ValueError."""
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC or path.suffix == ".gz":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path}: corrupt gzip data ({type(e).__name__}: {e})") from e
    return raw


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None, expected_md5: str | None = None) -> torch.Tensor:
    """Read an IDX file (raw or ``.gz``) into a uint8 tensor, validating it.

    Args:
        path: the file.
        ndim: if given, the number of dimensions the header must declare (3 for images, 1 for labels).
        expected_md5: if given, the md5 the *uncompressed* content must have. This identifies the data itself,
            whatever gzip wrapper it came in.

    Raises:
        ValueError: the file is not a valid IDX file of that kind, is truncated or oversize, or its gzip stream is
            corrupt. The message names the file.
        ChecksumError: (a ValueError) its content md5 differs from ``expected_md5``; the message names the file and
            the fix.
    """
    path = Path(path)
    data = _read_bytes(path)
    if expected_md5 is not None:
        actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if actual != expected_md5:
            raise ChecksumError(
                f"{path}: content md5 {actual} differs from the known {expected_md5}: the file is corrupt or not "
                f"the expected dataset. Fix: delete it and download it again (download=True in Python, --download on "
                f"the command line), or restore it from a good copy; verify=False skips the check (for synthetic "
                f"files only)"
            )
    return parse_idx(data, name=str(path), ndim=ndim)
