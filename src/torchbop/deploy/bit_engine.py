r"""The packed engine: a BNN's node records run with activations bitpacked between binary layers.

:func:`build_engine_ops` turns the node records of a packed network (:mod:`torchbop.deploy.packed_format`) into
inference modules for :class:`~torchbop.deploy.packed_model.PackedModel`, like
:func:`~torchbop.deploy.packed_ops.build_op` does for the pure-torch reference, but with each value held in one of
two forms:

- a float tensor, as the model holds it (the real first and last layers, residual additions, batch norms whose
  output feeds float operations, average pooling, ...): computed by the very torch modules of the reference;
- :class:`Bits`: the sign bits of a +-1 activation, NHWC, channels packed 8 to a byte (bit 1 = -1;
  :mod:`torchbop.deploy.bit_layout`).

What runs on bits (and stays bits):

- a sign quantizer used as a layer, or ``RSign`` (``sign(x - threshold)``): packs its float input;
- a binary convolution or dense layer that binarizes its input (groups 1, padding with 0 or +-1): the XNOR-popcount
  C kernel (:mod:`torchbop.deploy.engine_kernels`). Its output is the integer product as float32 (``* scale``,
  ``+ bias`` then follow as in the model) -- unless the layer, an optional max pooling and a batch norm (or
  nothing) lead to a value that only binary layers read (through their sign): then the layer writes packed bits
  directly, through the per-channel integer thresholds of :mod:`torchbop.deploy.thresholds` (exact), and the
  pooling runs on bits;
- max pooling (the AND of the bits: the maximum of +-1 values is +1 unless all are -1), flatten (the next dense
  layer's weight columns are put in NHWC order once, per input size), concatenation of channels (whole bytes),
  +1 padding (zero bits), the channels_last conversion, contiguous, dropout and identity.

Every other op reads a float tensor: bits are unpacked to +-1 for it (exact). So every network the reference runs
runs here, with the same logits bit for bit; where the engine meets something it does not accelerate it takes the
reference's path. Zero ("same") padding of a binary convolution reads the padded positions as +1 (zero bits) and
adds the correction ``(pad_value - 1) * sum of W over the padded positions`` per output position and channel (an
integer map per input size, cached); +1 padding needs none.

Example:
    >>> import torch
    >>> from torchbop.models import MnistBNN
    >>> from torchbop.deploy import pack_model
    >>> model = MnistBNN().eval()
    >>> x = torch.rand(3, 1, 28, 28) * 2 - 1
    >>> torch.equal(pack_model(model, backend="portable")(x), model(x).detach())
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchbop.deploy import engine_kernels as K
from torchbop.deploy.bit_layout import pack_bytes
from torchbop.deploy.packed_ops import build_op, unpack_weight_bits
from torchbop.deploy.thresholds import Thresholds, float_sign_thresholds, sign_thresholds

__all__ = ["Bits", "build_engine_ops", "to_float", "BinaryLayerOp"]

_BINARY = ("binary_conv2d", "binary_linear")
_PASS = ("channels_last", "contiguous")


@dataclass
class Bits:
    """A +-1 activation as sign bits: ``data`` uint8 ``[N, H, W, ceil(C / 8)]`` (bit 1 = -1, unused bits 0).

    ``shape`` is the value's shape in the model: ``(N, C, H, W)``; ``(N, C)`` for a dense layer's output
    (``H = W = 1``); ``(N, C * H * W)`` after a flatten (``flat``: the model's order is C, H, W).
    """

    data: Tensor
    channels: int
    shape: tuple[int, ...]
    flat: bool = False


def to_float(value: Tensor | Bits) -> Tensor:
    """The value as the model holds it: bits become float32 +-1 (channels_last for 4-D)."""
    if isinstance(value, Tensor):
        return value
    n, h, w, _ = value.data.shape
    shifts = torch.arange(8, dtype=torch.uint8)
    bits = (value.data.unsqueeze(-1) >> shifts) & 1
    signs = 1.0 - 2.0 * bits.reshape(n, h, w, -1)[..., : value.channels].float()
    nchw = signs.permute(0, 3, 1, 2)  # channels_last memory
    if value.flat:
        return nchw.reshape(n, -1)
    return nchw.reshape(value.shape) if len(value.shape) == 2 else nchw


def _to_bits(value: Tensor | Bits, path: str) -> Bits:
    if isinstance(value, Bits):
        return value
    return Bits(K.pack_signs_nhwc(value, path), value.shape[1], tuple(value.shape))


def _threads() -> int:
    return max(1, torch.get_num_threads())


class FloatOp(nn.Module):
    """A reference module on float inputs (bits are unpacked to +-1 first)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: Tensor | Bits) -> Tensor:
        return self.module(*[to_float(v) for v in inputs])


class SignOp(nn.Module):
    """Sign (sign(0) = +1) to bits; ``RSign`` with ``threshold``: ``sign(x - threshold)``, the model's subtraction."""

    def __init__(self, path: str, threshold: Tensor | None = None) -> None:
        super().__init__()
        self.path = path
        self.register_buffer("threshold", None if threshold is None else threshold.detach().clone())

    def forward(self, x: Tensor | Bits) -> Bits:
        if self.threshold is None:
            return _to_bits(x, self.path)
        x = to_float(x)
        return _to_bits(x - self.threshold.view((1, -1) + (1,) * (x.dim() - 2)), self.path)


def _weight_rows(weight: Tensor) -> Tensor:
    """+-1 weight ``[O, C, kh, kw]`` to int64 rows ``[O, Kw]``: ``(kh, kw, C)`` order, C padded to whole bytes, rows
    zero-filled to a multiple of 4 words (the kernel's layout)."""
    negative = (weight < 0).permute(0, 2, 3, 1)
    c = negative.shape[-1]
    if c % 8:
        negative = F.pad(negative, (0, -c % 8))
    rows = pack_bytes(negative.reshape(weight.shape[0], -1))
    if rows.shape[1] % 32:
        rows = F.pad(rows, (0, -rows.shape[1] % 32))
    return rows.contiguous().view(torch.int64)


class BinaryLayerOp(nn.Module):
    """A binary convolution or dense layer on bits (see the module docstring).

    Args:
        weight: +-1 ``[O, C, kh, kw]`` (a dense layer: ``[O, K]``).
        scale, bias: per output channel or None (``out * scale + bias``, the model's order).
        conv: for a convolution ``{"stride", "dilation", "pad": [l, r, t, b], "pad_value"}``; None for dense.
        path: the C path.
        fused: ``(thresholds, pool)`` to write bits: thresholds of the layer's output (with ``pool_flip`` when a
            max pooling follows), and the pooling's attributes or None.
    """

    def __init__(
        self,
        weight: Tensor,
        scale: Tensor | None,
        bias: Tensor | None,
        conv: dict[str, Any] | None,
        path: str,
        fused: tuple[Thresholds, dict[str, Any] | None] | None = None,
    ) -> None:
        super().__init__()
        self.out_channels = weight.shape[0]
        self.conv, self.path = conv, path
        self.register_buffer("weight_sign", weight.to(torch.int8))  # 1 byte per weight: rows per input layout
        self.register_buffer("scale", None if scale is None else scale.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self._rows: dict[Any, tuple[Tensor, tuple[int, int], int]] = {}
        self._base: dict[tuple[int, int], Tensor] = {}
        self._plans: dict[Any, Any] = {}
        self.fused = fused
        if conv is not None:
            self.register_buffer("rows", _weight_rows(weight))
            kh, kw = weight.shape[2:]
            words = (kh * kw * ((weight.shape[1] + 7) // 8) + 7) // 8
            self.register_buffer("panels", K.weight_panels(self.rows, words, path))  # the kernel's layout, once
        if fused is not None:
            thresholds, pool = fused
            pool_flip = thresholds.pool_flip if pool is not None else None
            layer_flip = thresholds.flip if pool_flip is None else thresholds.flip ^ pool_flip
            self.thr = (thresholds.threshold.contiguous(), layer_flip.contiguous())
            self.pool = pool
            self.pool_mask = None
            if pool_flip is not None:
                bits = F.pad(pool_flip.bool(), (0, -pool_flip.numel() % 8))
                self.pool_mask = pack_bytes(bits).contiguous()

    def _dense_rows(self, x: Bits) -> tuple[Tensor, tuple[int, int], int]:
        """The weight rows of a dense layer for ``x``'s layout: a ``H x W`` convolution of its pixels."""
        n, h, w, _ = x.data.shape
        key = (h, w, x.channels, x.flat)
        if key not in self._rows:
            weight = self.weight_sign.float()
            if weight.shape[1] != x.channels * h * w:
                raise ValueError(f"a dense layer of {weight.shape[1]} inputs gets {x.channels * h * w} features")
            four = weight.view(self.out_channels, x.channels, h, w)  # flatten's order: C, H, W
            words = (h * w * ((x.channels + 7) // 8) + 7) // 8
            panels = K.weight_panels(_weight_rows(four), words, self.path)
            self._rows[key] = (panels, (h, w), x.channels * h * w)
        return self._rows[key]

    def _base_of(self, h: int, w: int, fan_in: int) -> Tensor:
        """int32 ``[Ho * Wo, O]``: ``K + (pad_value - 1) * (sum of W over the padded positions)``; ``[1, O]`` where
        that is ``K`` at every position (no correction)."""
        key = (h, w)
        if key not in self._base:
            conv = self.conv
            if conv is None or not any(conv["pad"]) or conv["pad_value"] == 1.0:
                base = torch.full((1, self.out_channels), fan_in, dtype=torch.int32)
            else:
                weight = self.weight_sign.float()
                indicator = F.pad(torch.zeros(1, weight.shape[1], h, w), conv["pad"], value=1.0)
                padded = F.conv2d(indicator, weight, None, conv["stride"], 0, conv["dilation"])[0]
                base = ((conv["pad_value"] - 1.0) * padded + fan_in).round().to(torch.int32)
                base = base.permute(1, 2, 0).reshape(-1, self.out_channels)
            self._base[key] = base.contiguous()
        return self._base[key]

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        if self.conv is None:
            return 1, 1
        kh, kw = self.weight_sign.shape[2:]
        (sh, sw), (dh, dw) = self.conv["stride"], self.conv["dilation"]
        left, right, top, bottom = self.conv["pad"]
        return (h + top + bottom - dh * (kh - 1) - 1) // sh + 1, (w + left + right - dw * (kw - 1) - 1) // sw + 1

    def forward(self, x: Tensor | Bits) -> Tensor | Bits:
        x = _to_bits(x, self.path)
        key = (tuple(x.data.shape), x.channels, x.flat, len(x.shape), _threads())
        run = self._plans.get(key)
        if run is None:  # once per input layout: validate, build rows, base and the prepared kernel calls
            run = self._plans[key] = self._plan(x, key[-1])
        return run(x)

    def _plan(self, x: Bits, threads: int):
        """``run(bits) -> Bits or Tensor`` for inputs laid out as ``x``: the kernel calls prepared once (arguments
        validated, pointers kept), so a call costs the kernel and a few microseconds of Python."""
        n, h, w, _ = x.data.shape
        if self.conv is None:
            rows, kernel, fan_in = self._dense_rows(x)
            geometry = dict(kernel_size=kernel, stride=(1, 1), dilation=(1, 1), pad=(0, 0, 0, 0))
            base = self._base_of(1, 1, fan_in)
        else:
            if x.flat or x.channels != self.weight_sign.shape[1]:
                raise ValueError(f"a convolution of {self.weight_sign.shape[1]} input channels gets {x.shape}")
            rows, fan_in = self.panels, self.weight_sign[0].numel()
            geometry = dict(
                kernel_size=tuple(self.weight_sign.shape[2:]),
                stride=tuple(self.conv["stride"]),
                dilation=tuple(self.conv["dilation"]),
                pad=tuple(self.conv["pad"]),
            )
            base = self._base_of(h, w, fan_in)
        ho, wo = self._out_size(h, w)
        shape = tuple(x.data.shape)
        if self.fused is not None:
            conv = K.prepare_binary_conv(
                shape,
                rows,
                base,
                path=self.path,
                threads=threads,
                thresholds=self.thr,
                out_channels=self.out_channels,
                **geometry,
            )
            out_shape = (n, self.out_channels, ho, wo) if self.conv is not None else (n, self.out_channels)
            if self.pool is None:
                return lambda v: Bits(conv(v.data), self.out_channels, out_shape)
            p = self.pool
            pool = K.prepare_maxpool_bits(
                tuple(conv.out_shape),
                kernel_size=p["kernel_size"],
                stride=p["stride"],
                padding=p["padding"],
                dilation=p["dilation"],
                ceil_mode=p["ceil_mode"],
                flip=self.pool_mask,
            )
            pooled = (n, self.out_channels, pool.out_shape[1], pool.out_shape[2])
            return lambda v: Bits(pool(conv(v.data)), self.out_channels, pooled)
        conv = K.prepare_binary_conv(
            shape, rows, base, path=self.path, threads=threads, out_channels=self.out_channels, **geometry
        )
        dense = self.conv is None
        channel_shape = (1, -1) if dense else (1, -1, 1, 1)
        scale = None if self.scale is None else self.scale.view(channel_shape)
        bias = None if self.bias is None else self.bias.view(channel_shape)

        def run(v: Bits) -> Tensor:
            out = conv(v.data)
            if not dense:
                out = out.view(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)  # channels_last memory
            if scale is not None:
                out = out * scale
            return out if bias is None else out + bias

        return run


class MaxPoolBitsOp(nn.Module):
    """``nn.MaxPool2d`` on bits (the AND of each window), or the reference pooling on a float input."""

    def __init__(self, attrs: dict[str, Any], reference: nn.Module) -> None:
        super().__init__()
        self.attrs, self.reference = _pool_attrs(attrs), reference

    def forward(self, x: Tensor | Bits) -> Tensor | Bits:
        if not isinstance(x, Bits) or x.flat or len(x.shape) != 4:
            return self.reference(to_float(x))
        bits = K.maxpool_bits(x.data, **self.attrs)
        return Bits(bits, x.channels, (x.shape[0], x.channels, bits.shape[1], bits.shape[2]))


class BitsOrFloatOp(nn.Module):
    """Flatten, cat, +1 padding and the layout ops: on bits where the bits allow it, else the reference."""

    def __init__(self, op: str, attrs: dict[str, Any], reference: nn.Module) -> None:
        super().__init__()
        self.op, self.attrs, self.reference = op, attrs, reference

    def _on_bits(self, inputs: tuple[Tensor | Bits, ...]) -> Bits | None:
        if not all(isinstance(v, Bits) and not v.flat and len(v.shape) == 4 for v in inputs):
            return None
        x = inputs[0]
        assert isinstance(x, Bits)
        if self.op in _PASS or self.op in ("dropout", "identity"):
            return x
        if self.op == "flatten" and self.attrs.get("start_dim") == 1 and self.attrs.get("end_dim") == -1:
            return Bits(x.data, x.channels, (x.shape[0], x.channels * x.shape[2] * x.shape[3]), flat=True)
        if self.op == "cat" and self.attrs.get("dim") in (1, -3) and all(v.channels % 8 == 0 for v in inputs):
            data = torch.cat([v.data for v in inputs], dim=-1)  # type: ignore[union-attr]
            channels = sum(v.channels for v in inputs)  # type: ignore[union-attr]
            return Bits(data, channels, (x.shape[0], channels, x.shape[2], x.shape[3]))
        if self.op == "constant_pad2d" and self.attrs.get("value") == 1.0:
            left, right, top, bottom = self.attrs["padding"]
            if min(left, right, top, bottom) >= 0:
                data = F.pad(x.data, (0, 0, left, right, top, bottom))  # zero bits are +1
                return Bits(data, x.channels, (x.shape[0], x.channels, data.shape[1], data.shape[2]))
        return None

    def forward(self, *inputs: Tensor | Bits) -> Tensor | Bits:
        bits = self._on_bits(inputs)
        return bits if bits is not None else self.reference(*[to_float(v) for v in inputs])


def _pair(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def _pool_attrs(a: dict[str, Any]) -> dict[str, Any]:
    stride = a.get("stride") or a["kernel_size"]
    return dict(
        kernel_size=_pair(a["kernel_size"]),
        stride=_pair(stride),
        padding=_pair(a.get("padding", 0)),
        dilation=_pair(a.get("dilation", 1)),
        ceil_mode=bool(a.get("ceil_mode", False)),
    )


def _runs_on_bits(node: dict[str, Any]) -> bool:
    """A binary layer the kernel runs: it binarizes its input, one group, padding 0 or +-1."""
    a = node.get("attrs", {})
    if node["op"] not in _BINARY or not a.get("binary_input"):
        return False
    if node["op"] == "binary_linear":
        return True
    return a.get("groups", 1) == 1 and float(a.get("pad_value", 0.0)) in (0.0, 1.0, -1.0)


#: Ops that pass a +-1 value on as +-1 (and run on bits): a value read only through them and through signs needs
#: only its sign.
_SIGN_PRESERVING = ("flatten", "max_pool2d", "dropout", "identity", *_PASS)


def _reads_sign(node: dict[str, Any], consumers: dict[str, list[dict[str, Any]]], output: str) -> bool:
    """The node uses only the sign of its input: a binary layer that binarizes it, a sign, or a sign-preserving op
    whose own value is read only through its sign (and is not the network's output)."""
    if node["op"] == "sign" or (node["op"] in _BINARY and bool(node.get("attrs", {}).get("binary_input"))):
        return True
    if node["op"] in _SIGN_PRESERVING and node["name"] != output and consumers[node["name"]]:
        return all(_reads_sign(user, consumers, output) for user in consumers[node["name"]])
    return False


class FloatThresholdOp(nn.Module):
    """A batch norm on a real-valued input whose output is read only through its sign: the bits
    ``(v < threshold) ^ flip`` per channel (:func:`~torchbop.deploy.thresholds.float_sign_thresholds`), computed
    in one pass in place of the batch norm, the sign and the packing."""

    def __init__(self, threshold: Tensor, flip: Tensor, path: str) -> None:
        super().__init__()
        self.path = path
        self.register_buffer("threshold", threshold)
        self.register_buffer("flip", flip)
        self.flipbytes = K.pack_flip(flip.contiguous())

    def forward(self, x: Tensor | Bits) -> Bits:
        x = to_float(x)
        data = K.pack_thresholds_nhwc(x, self.threshold, self.flip, self.path, self.flipbytes)
        return Bits(data, x.shape[1], tuple(x.shape))


def build_engine_ops(
    nodes: list[dict[str, Any]], tensors: dict[str, Tensor], output: str, path: str
) -> dict[str, nn.Module]:
    """Node name -> inference module of the engine on C path ``path``, in the nodes' order (see the module
    docstring). Nodes folded into a fused layer become identities on its bits."""
    by_name = {node["name"]: node for node in nodes}
    consumers: dict[str, list[dict[str, Any]]] = {name: [] for name in by_name}
    for node in nodes:
        for source in node["inputs"]:
            if source in consumers:
                consumers[source].append(node)

    def tensor(node: dict[str, Any], key: str) -> Tensor | None:
        name = node.get("tensors", {}).get(key)
        return None if name is None else tensors[name]

    def only_consumer(name: str, op: str) -> dict[str, Any] | None:
        users = consumers[name]
        return users[0] if len(users) == 1 and users[0]["op"] == op and name != output else None

    ops: dict[str, nn.Module] = {}
    absorbed: set[str] = set()
    for node in nodes:
        name, op, a = node["name"], node["op"], node.get("attrs", {})
        if name in absorbed:
            ops[name] = nn.Identity()
            continue
        if op in _BINARY and _runs_on_bits(node):
            weight = unpack_weight_bits(tensor(node, "weight_bits"), a["shape"])
            if op == "binary_linear":
                weight = weight[:, :, None, None]
                conv = None
            else:
                conv = {
                    "stride": list(a["stride"]),
                    "dilation": list(a["dilation"]),
                    "pad": list(a["pad"]),
                    "pad_value": float(a["pad_value"]),
                }
            scale, bias = tensor(node, "scale"), tensor(node, "bias")
            fused = _fusion(node, weight, scale, bias, consumers, only_consumer, tensor, output)
            folded: list[str] = []
            if fused is not None:
                folded = fused[2]
                absorbed.update(folded)
                fused = fused[:2]
            ops[name] = BinaryLayerOp(
                weight if op == "binary_conv2d" else weight[:, :, 0, 0], scale, bias, conv, path, fused
            )
            ops[name].folded = folded  # the pooling and batch norm nodes it computes (for inspection and tests)
            continue
        reference = build_op(node, tensors, "torch")
        users = consumers[name]
        if op == "batch_norm" and name != output and users and all(_reads_sign(u, consumers, output) for u in users):
            found = float_sign_thresholds(lambda v: reference(v), tensor(node, "running_mean").numel())
            if found is not None:
                ops[name] = FloatThresholdOp(*found, path)
                continue
        if op in ("sign", "rsign"):
            ops[name] = SignOp(path, tensor(node, "threshold") if op == "rsign" else None)
        elif op == "max_pool2d":
            ops[name] = MaxPoolBitsOp(a, reference)
        elif op in ("flatten", "cat", "constant_pad2d", *_PASS):
            ops[name] = BitsOrFloatOp(op, a, reference)
        else:
            ops[name] = FloatOp(reference)
    return ops


def _fusion(node, weight, scale, bias, consumers, only_consumer, tensor, output):
    """``(thresholds, pool attrs or None, absorbed node names)`` when ``node``'s value, after an optional max pooling
    and batch norm, is read only through its sign; else None."""
    name = node["name"]
    chain: list[dict[str, Any]] = []
    pool = only_consumer(name, "max_pool2d") if node["op"] == "binary_conv2d" else None
    last = name
    if pool is not None:
        chain.append(pool)
        last = pool["name"]
    bn = only_consumer(last, "batch_norm")
    if bn is not None:
        chain.append(bn)
        last = bn["name"]
    elif pool is not None:
        pass  # conv -> pool -> sign readers: sign(max v) = max sign(v)
    users = consumers[last]
    if last == output or not users or not all(_reads_sign(u, consumers, output) for u in users):
        return None
    bn_module = None if bn is None else build_op(bn, {k: v for k, v in _bn_tensors(bn, tensor).items()}, "torch")

    def post(x: Tensor) -> Tensor:  # the model's float operations after the integer product, [R, C]
        if scale is not None:
            x = x * scale.float().view(1, -1)
        if bias is not None:
            x = x + bias.float().view(1, -1)
        return x if bn_module is None else bn_module(x)

    fan_in = weight[0].numel()
    thresholds = sign_thresholds(post, fan_in, weight.shape[0])
    if thresholds is None:
        return None
    pool_attrs = None
    if pool is not None:
        pool_attrs = _pool_attrs(pool["attrs"])
        gamma = None if bn is None else tensor(bn, "weight")
        negative = torch.zeros(weight.shape[0], dtype=torch.bool) if gamma is None else gamma < 0
        thresholds.pool_flip = negative.to(torch.uint8)
    return thresholds, pool_attrs, [n["name"] for n in chain]


def _bn_tensors(bn: dict[str, Any], tensor) -> dict[str, Tensor]:
    """The batch norm record's tensors under the names its record gives them (for :func:`build_op`)."""
    return {name: tensor(bn, key) for key, name in bn.get("tensors", {}).items() if name is not None}
