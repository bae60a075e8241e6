r"""The node records of a packed network turned back into inference modules: one builder per ``op``.

:func:`build_op` reads one node record (:mod:`torchbop.deploy.packed_format` documents them: ``op``, ``attrs``,
``tensors``) and returns the ``nn.Module`` that computes it from the node's inputs, in order. Binary layers are the
exact integer layers of :mod:`torchbop.deploy.packed_layers`; everything else is the very torch call the model made,
on the same numbers: real convolutions and dense layers, pooling and ``nn.PReLU`` are rebuilt as the torch modules
themselves (``torch.nn.utils.skip_init``, then the stored tensors), batch norm is ``F.batch_norm`` with the running
statistics, and the functions of a residual network (``operator.add``, ``torch.cat``, ``torch.flatten``, ReLU, the
channels_last conversion) are small modules that make the same call.

ReActNet's activations (Liu et al., arXiv:2003.03488, eqs. 3-4; :mod:`torchbop.nn.activations`):
``rsign`` is ``sign(x - threshold)`` with sign(0) = +1, exactly as ``RSign``'s forward (the subtraction is the same
float32 operation and the sign of its result is exact), and ``rprelu`` is ``F.prelu(x - shift_in, slope) +
shift_out``, the same three calls.

Example:
    >>> import torch
    >>> node = {"op": "cat", "attrs": {"dim": 1}, "tensors": {}}
    >>> build_op(node, {}, "torch")(torch.zeros(1, 2), torch.ones(1, 1))
    tensor([[0., 0., 1.]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchbop.deploy.bit_layout import pack_bytes
from torchbop.deploy.packed_layers import PackedBatchNorm, PackedBinaryConv2d, PackedBinaryLinear
from torchbop.models.memory_format import to_channels_last
from torchbop.quantizers import sign

__all__ = ["OPS", "build_op", "pack_weight_bits", "unpack_weight_bits", "MEMORY_FORMATS"]

#: Memory-format names of the records -> torch memory formats.
MEMORY_FORMATS = {"channels_last": torch.channels_last, "contiguous_format": torch.contiguous_format}


def pack_weight_bits(weight: Tensor) -> Tensor:
    """+-1 weight -> uint8 bits (1 = +1), row-major, LSB first, zero bits to fill the last byte."""
    bits = (weight > 0).flatten()
    return pack_bytes(F.pad(bits, (0, -bits.numel() % 8)))


def unpack_weight_bits(bits: Tensor, shape: list[int]) -> Tensor:
    """The inverse of :func:`pack_weight_bits`: float +-1 of ``shape``."""
    count = 1
    for s in shape:
        count *= s
    unpacked = (bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return unpacked.flatten()[:count].float().mul_(2).sub_(1).reshape(shape)


def _per_channel(param: Tensor, x: Tensor) -> Tensor:
    return param.view((1, -1) + (1,) * (x.dim() - 2))


class PackedSign(nn.Module):
    """A deterministic sign quantizer used as a layer (sign(0) = +1)."""

    def forward(self, x: Tensor) -> Tensor:
        return sign(x)


class PackedRSign(nn.Module):
    """``RSign`` for inference: ``sign(x - threshold)`` per channel (sign(0) = +1)."""

    def __init__(self, threshold: Tensor) -> None:
        super().__init__()
        self.register_buffer("threshold", threshold.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return sign(x - _per_channel(self.threshold, x))


class PackedRPReLU(nn.Module):
    """``RPReLU`` for inference: ``F.prelu(x - shift_in, slope) + shift_out`` per channel."""

    def __init__(self, shift_in: Tensor, slope: Tensor, shift_out: Tensor) -> None:
        super().__init__()
        for name, value in (("shift_in", shift_in), ("slope", slope), ("shift_out", shift_out)):
            self.register_buffer(name, value.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.prelu(x - _per_channel(self.shift_in, x), self.slope) + _per_channel(self.shift_out, x)


class Add(nn.Module):
    """``a + b``: a residual connection (``operator.add`` / ``torch.add`` of two tensors)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class Cat(nn.Module):
    """``torch.cat(inputs, dim)``: concatenation (of channels, ``dim=1``, in the models)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

    def forward(self, *inputs: Tensor) -> Tensor:
        return torch.cat(inputs, self.dim)


class ChannelsLast(nn.Module):
    """The models' input conversion, :func:`torchbop.models.memory_format.to_channels_last`."""

    def forward(self, x: Tensor) -> Tensor:
        return to_channels_last(x)


class Contiguous(nn.Module):
    """``x.contiguous(memory_format=...)``."""

    def __init__(self, memory_format: str) -> None:
        super().__init__()
        self.memory_format = memory_format

    def extra_repr(self) -> str:
        return self.memory_format

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=MEMORY_FORMATS[self.memory_format])


def _torch_module(cls: type[nn.Module], kwargs: dict[str, Any], tensors: dict[str, Tensor | None]) -> nn.Module:
    """``cls(**kwargs)`` without its random initialisation, holding ``tensors`` (the model's own values)."""
    module = torch.nn.utils.skip_init(cls, **kwargs)
    module.load_state_dict({key: value for key, value in tensors.items() if value is not None}, strict=True)
    return module.requires_grad_(False).eval()


def _binary_conv2d(a: dict[str, Any], t: Callable[[str], Tensor | None], backend: str) -> nn.Module:
    padding = a["padding"]
    return PackedBinaryConv2d(
        unpack_weight_bits(t("weight_bits"), a["shape"]),
        t("bias"),
        stride=tuple(a["stride"]),
        padding=padding if isinstance(padding, str) else tuple(padding),
        dilation=tuple(a["dilation"]),
        pad=tuple(a["pad"]),
        pad_value=a["pad_value"],
        groups=a.get("groups", 1),
        scale=t("scale"),
        binary_input=a["binary_input"],
        backend=backend,
    )


def _binary_linear(a: dict[str, Any], t: Callable[[str], Tensor | None], backend: str) -> nn.Module:
    return PackedBinaryLinear(
        unpack_weight_bits(t("weight_bits"), a["shape"]),
        t("bias"),
        scale=t("scale"),
        binary_input=a["binary_input"],
        backend=backend,
    )


def _conv2d(a: dict[str, Any], t: Callable[[str], Tensor | None], backend: str) -> nn.Module:
    out_channels, per_group, kh, kw = a["shape"]
    padding = a["padding"]
    return _torch_module(
        nn.Conv2d,
        dict(
            in_channels=per_group * a["groups"],
            out_channels=out_channels,
            kernel_size=(kh, kw),
            stride=tuple(a["stride"]),
            padding=padding if isinstance(padding, str) else tuple(padding),
            dilation=tuple(a["dilation"]),
            groups=a["groups"],
            bias=t("bias") is not None,
            padding_mode=a["padding_mode"],
        ),
        {"weight": t("weight"), "bias": t("bias")},
    )


def _linear(a: dict[str, Any], t: Callable[[str], Tensor | None], backend: str) -> nn.Module:
    out_features, in_features = a["shape"]
    return _torch_module(
        nn.Linear,
        dict(in_features=in_features, out_features=out_features, bias=t("bias") is not None),
        {"weight": t("weight"), "bias": t("bias")},
    )


def _prelu(a: dict[str, Any], t: Callable[[str], Tensor | None], backend: str) -> nn.Module:
    weight = t("weight")
    return _torch_module(nn.PReLU, dict(num_parameters=weight.numel()), {"weight": weight})


def _batch_norm(a: dict[str, Any], t: Callable[[str], Tensor | None], backend: str) -> nn.Module:
    return PackedBatchNorm(t("running_mean"), t("running_var"), t("weight"), t("bias"), a["eps"])


def _tuple_or_int(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _from_attrs(cls: type[nn.Module]) -> Callable[..., nn.Module]:
    """A builder for a torch module without tensors: ``cls(**attrs)`` (JSON lists back to tuples)."""
    return lambda a, t, backend: cls(**{key: _tuple_or_int(value) for key, value in a.items()})


#: op name -> builder(attrs, tensor lookup, backend) -> module. A new op is one line here, its converter in
#: :mod:`torchbop.deploy.graph_export` and a row in :mod:`torchbop.deploy.packed_format`'s table.
OPS: dict[str, Callable[[dict[str, Any], Callable[[str], Tensor | None], str], nn.Module]] = {
    "binary_conv2d": _binary_conv2d,
    "binary_linear": _binary_linear,
    "conv2d": _conv2d,
    "linear": _linear,
    "batch_norm": _batch_norm,
    "max_pool2d": _from_attrs(nn.MaxPool2d),
    "avg_pool2d": _from_attrs(nn.AvgPool2d),
    "adaptive_avg_pool2d": _from_attrs(nn.AdaptiveAvgPool2d),
    "constant_pad2d": _from_attrs(nn.ConstantPad2d),
    "flatten": _from_attrs(nn.Flatten),
    "relu": lambda a, t, backend: nn.ReLU(),
    "hardtanh": _from_attrs(nn.Hardtanh),
    "prelu": _prelu,
    "sign": lambda a, t, backend: PackedSign(),
    "rsign": lambda a, t, backend: PackedRSign(t("threshold")),
    "rprelu": lambda a, t, backend: PackedRPReLU(t("shift_in"), t("slope"), t("shift_out")),
    "add": lambda a, t, backend: Add(),
    "cat": _from_attrs(Cat),
    "channels_last": lambda a, t, backend: ChannelsLast(),
    "contiguous": _from_attrs(Contiguous),
}


def build_op(node: dict[str, Any], tensors: dict[str, Tensor], backend: str) -> nn.Module:
    """The inference module of one node record; ``KeyError`` for a missing tensor, ``ValueError`` for an unknown op.

    Args:
        node: the record (``op``, ``attrs``, ``tensors``: key -> name in ``tensors`` or None).
        tensors: the file's tensors by name.
        backend: ``"kernel"`` or ``"torch"`` for the binary layers.
    """
    op = node["op"]
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} (known: {', '.join(OPS)})")
    names = node.get("tensors", {})

    def tensor(key: str) -> Tensor | None:
        name = names.get(key)
        return None if name is None else tensors[name]

    return OPS[op](dict(node.get("attrs", {})), tensor, backend)
