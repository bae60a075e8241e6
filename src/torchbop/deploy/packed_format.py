r"""The packed-model file: a versioned container of a JSON header and raw little-endian tensors.

Layout (format version 2, the same container as version 1)::

    offset 0    8 bytes   magic  b"TBOPPACK"
    offset 8    4 bytes   format version, uint32 little-endian (2; 1 for files of torchbop before residual BNNs)
    offset 12   4 bytes   header length H, uint32 little-endian
    offset 16   H bytes   header: UTF-8 JSON object (below)
    16 + H      payload   the tensors' bytes, each at a 64-byte-aligned offset from the payload's start

The header holds ``"format": "torchbop-packed"``, ``"version"``, ``"payload_bytes"`` (the payload's length),
``"payload_crc32"`` (zlib CRC-32 of the payload), ``"tensors"`` (name -> ``{"dtype", "shape", "offset",
"nbytes"}``, dtype one of :data:`DTYPES`) and whatever the writer adds (:mod:`torchbop.deploy.packed_model` adds
``"network"``, below). Nothing is pickled: reading a file runs no code from it.

The network (version 2) is a graph: ``{"nodes": [...], "output": NAME, "input_shape": [C, H, W] or null,
"source": {...}}``. Each node is one JSON object, listed in an order in which it can run (its inputs come first)::

    {"name": "layer1_0_conv1",         unique; "input" names the network's input
     "op": "binary_conv2d",            what it computes (table below)
     "inputs": ["layer1_0_rsign"],     the values it takes, in order, by name
     "module": "layer1.0.conv1",       the model's module it came from, or null for a function
     "attrs": {"stride": [1, 1], ...}, JSON numbers, strings, lists, booleans
     "tensors": {"weight_bits": "layer1_0_conv1.weight_bits", "bias": null}}   key -> tensor name, or null

==================== ====== ==================================================== ===================================
op                   inputs attrs                                                tensors
==================== ====== ==================================================== ===================================
binary_conv2d        1      shape [O, C/groups, kh, kw], stride, padding,        weight_bits (uint8, 1 = +1,
                            dilation, groups, pad [l, r, t, b], pad_value,       row-major, LSB first), bias, scale
                            binary_input (sign the input; false: real input)     (per output channel, or null)
binary_linear        1      shape [O, K], binary_input                           weight_bits, bias, scale
conv2d               1      shape, stride, padding, dilation, groups,            weight, bias (float, as the model)
                            padding_mode
linear               1      shape                                                weight, bias
batch_norm           1      eps                                                  running_mean, running_var, weight,
                                                                                 bias (weight, bias may be null)
max_pool2d           1      kernel_size, stride, padding, dilation, ceil_mode
avg_pool2d           1      kernel_size, stride, padding, ceil_mode,
                            count_include_pad, divisor_override
adaptive_avg_pool2d  1      output_size
constant_pad2d       1      padding [l, r, t, b], value
flatten              1      start_dim, end_dim
relu                 1
hardtanh             1      min_val, max_val
prelu                1                                                           weight
sign                 1                                                           (sign, sign(0) = +1)
rsign                1                                                           threshold: sign(x - threshold)
rprelu               1                                                           shift_in, slope, shift_out
add                  2                                                           (a + b)
cat                  n      dim
channels_last        1                                                           (the models' input conversion)
contiguous           1      memory_format: "channels_last" / "contiguous_format"
==================== ====== ==================================================== ===================================

Each op is the torch call the model makes (binary products as exact integers); :mod:`torchbop.deploy.packed_ops`
builds one module per node. Version 1 (still read) stored ``{"layers": [...], "channels_last": bool}``: a chain of
records ``{"type": OP, "name": MODULE, ...attributes and tensor names}`` of the ops ``binary_conv2d`` (groups 1, no
scale), ``binary_linear``, ``batch_norm``, ``max_pool2d`` and ``flatten``, run in order after the channels_last
conversion; :func:`torchbop.deploy.packed_model.nodes_from_version1` turns it into nodes.

A file that cannot be read (missing, wrong magic, a format version not in :data:`READABLE_VERSIONS`, truncated, a
corrupt payload, a missing or malformed key) raises :class:`~torchbop.errors.UserError` with one line naming the file
and the fix. An existing output file is replaced only with ``overwrite=True``; a file is written to a temporary
neighbour and moved into place with ``os.replace``, so a reader never sees half a file.

Example:
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "x.tbop"
    >>> write_packed(path, {"note": "hi"}, {"bits": torch.tensor([1, 2, 3], dtype=torch.uint8)})
    >>> header, tensors = read_packed(path)
    >>> header["note"], tensors["bits"]
    ('hi', tensor([1, 2, 3], dtype=torch.uint8))
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchbop.atomic_file import atomic_write
from torchbop.errors import UserError

__all__ = ["MAGIC", "FORMAT_VERSION", "READABLE_VERSIONS", "DTYPES", "write_packed", "read_packed"]

MAGIC = b"TBOPPACK"
#: The version this torchbop writes. Bump it on any change an older reader would misread.
FORMAT_VERSION = 2
#: The versions this torchbop reads (version 1: chains of layers, before residual BNNs).
READABLE_VERSIONS = (1, 2)
#: dtype names of the header -> torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_PREFIX = struct.Struct("<8sII")
_ALIGN = 64
_FIX = "export it again from its checkpoint with `torchbop export RUN_DIR -o FILE`"


def _check_byteorder() -> None:
    if sys.byteorder != "little":  # the payload is little-endian and read without swapping
        raise RuntimeError("torchbop packed files are read on little-endian machines only")


def write_packed(
    path: str | os.PathLike[str], header: dict[str, Any], tensors: dict[str, Tensor], *, overwrite: bool = False
) -> None:
    """Write ``tensors`` and the JSON-serializable ``header`` (keys other than the container's own) to ``path``.

    Raises:
        UserError: ``path`` exists and ``overwrite`` is False.
    """
    _check_byteorder()
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path}: already exists; choose another output file or pass --overwrite to replace it")
    entries, chunks, offset = {}, [], 0
    for name, tensor in tensors.items():
        dtype = next((key for key, value in DTYPES.items() if value == tensor.dtype), None)
        if dtype is None:
            raise ValueError(f"tensor {name!r}: dtype {tensor.dtype} cannot be stored (known: {', '.join(DTYPES)})")
        data = tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        pad = -offset % _ALIGN
        chunks.append(b"\0" * pad + data)
        offset += pad
        entries[name] = {"dtype": dtype, "shape": list(tensor.shape), "offset": offset, "nbytes": len(data)}
        offset += len(data)
    payload = b"".join(chunks)
    full = {
        "format": "torchbop-packed",
        "version": FORMAT_VERSION,
        **header,
        "tensors": entries,
        "payload_bytes": len(payload),
        "payload_crc32": zlib.crc32(payload),
    }
    text = json.dumps(full, separators=(",", ":")).encode()
    blob = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(text)) + text + payload
    with atomic_write(path, "wb") as file:
        file.write(blob)


def read_packed(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(header, tensors)`` of a file written by :func:`write_packed`, every check of the module docstring made;
    ``header["version"]`` is the file's format version.

    Raises:
        UserError: the file is missing or cannot be read as a packed model of a version in
            :data:`READABLE_VERSIONS`.
    """
    _check_byteorder()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; give a file written by `torchbop export`")
    blob = path.read_bytes()
    if len(blob) < _PREFIX.size or blob[:8] != MAGIC:
        raise UserError(
            f"{path}: not a torchbop packed model (no {MAGIC.decode()} magic at its start); give a file "
            "written by `torchbop export`"
        )
    _, version, header_length = _PREFIX.unpack_from(blob)
    if version not in READABLE_VERSIONS:
        raise UserError(
            f"{path}: packed format version {version}, but this torchbop reads versions "
            f"{' and '.join(map(str, READABLE_VERSIONS))}; {_FIX} (or use the torchbop that wrote it)"
        )
    start = _PREFIX.size + header_length
    if len(blob) < start:
        raise UserError(f"{path}: truncated (the header ends at byte {start}, the file has {len(blob)}); {_FIX}")
    try:
        header = json.loads(blob[_PREFIX.size : start].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: corrupt header ({error}); {_FIX}") from error
    if not isinstance(header, dict):
        raise UserError(f"{path}: corrupt header (not a JSON object); {_FIX}")
    for key, kind in (("tensors", dict), ("payload_bytes", int), ("payload_crc32", int)):
        if not isinstance(header.get(key), kind):
            raise UserError(f"{path}: header key {key!r} is missing or malformed; {_FIX}")
    payload = blob[start:]
    if len(payload) != header["payload_bytes"]:
        state = "truncated" if len(payload) < header["payload_bytes"] else "has trailing bytes"
        raise UserError(
            f"{path}: {state} (payload of {len(payload)} bytes, the header says {header['payload_bytes']}); {_FIX}"
        )
    if zlib.crc32(payload) != header["payload_crc32"]:
        raise UserError(f"{path}: corrupt payload (CRC-32 mismatch); {_FIX}")
    header["version"] = version
    return header, {name: _tensor(path, name, entry, payload) for name, entry in header["tensors"].items()}


def _tensor(path: Path, name: str, entry: Any, payload: bytes) -> Tensor:
    try:
        dtype = DTYPES[entry["dtype"]]
        shape = [int(s) for s in entry["shape"]]
        offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
        count = 1
        for s in shape:
            count *= s
        if (
            min(shape, default=0) < 0
            or nbytes != count * dtype.itemsize
            or offset < 0
            or offset + nbytes > len(payload)
        ):
            raise ValueError("shape, size and offset disagree")
    except (KeyError, TypeError, ValueError) as error:
        raise UserError(
            f"{path}: malformed entry for tensor {name!r} ({type(error).__name__}: {error}); {_FIX}"
        ) from error
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    data = bytearray(payload[offset : offset + nbytes])  # a writable copy: tensors that own their memory
    return torch.frombuffer(data, dtype=torch.uint8).view(dtype).reshape(shape)
