r"""From a trained BNN to a packed file and back to a fast, exact inference module.

:func:`export` writes a trained model to a packed file (:mod:`torchbop.deploy.packed_format`): binary weights 8 to
a byte, batch norm's running statistics, shift (and scale, if any) and ``eps`` as they are, the pooling and flatten
settings, and nothing else (no optimizer state, no latent weights, no training configuration).
:func:`load_packed` reads it back as a :class:`PackedModel`, an ``nn.Module`` for inference only.
:func:`pack_model` goes straight from model to :class:`PackedModel` in memory.

The network is read from the model's ``nn.Sequential`` parts in order: the model itself when it is an
``nn.Sequential``, else its ``features`` then ``classifier`` (:class:`~torchbop.models.MnistBNN`,
:class:`~torchbop.models.BinaryNet`). Supported layers: ``BinaryConv2d`` (groups 1, zero padding mode),
``BinaryLinear``, batch norm with running statistics (``ShiftBatchNorm1d/2d``, ``nn.BatchNorm1d/2d``),
``nn.MaxPool2d``, ``nn.Flatten``, and ``nn.Dropout`` / ``nn.Identity`` (dropped); anything else raises
``ValueError`` naming the layer. A binary layer's input quantizer must be deterministic with a sign forward
(``SteSign``, ``Sign``, ``ApproxSign``, ``SwishSign``), or absent (real input).

Exactness: a :class:`PackedModel` computes the model's eval-mode forward. Binary layers give the same integers as
the model's float32 products (:mod:`torchbop.deploy.packed_layers`), and everything else is the same torch call on
the same numbers in the same memory format, so the logits are equal bit for bit whenever torch computes the first
(real-input) convolution and the batch norms the same way on the two sides; ``tests/deploy`` checks equal argmax
on real test images and logits within ``1e-5`` relative (float32 rounding of the non-binary parts, should a kernel
choose another summation order for another batch size).

Example:
    >>> import torch
    >>> from torchbop.models import MnistBNN
    >>> model = MnistBNN().eval()
    >>> packed = pack_model(model, backend="torch")
    >>> x = torch.rand(2, 1, 28, 28) * 2 - 1
    >>> torch.equal(packed(x), model(x).detach())
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchbop.deploy.packed_format import read_packed, write_packed
from torchbop.deploy.packed_layers import PackedBatchNorm, PackedBinaryConv2d, PackedBinaryLinear
from torchbop.deploy.bit_layout import pack_bytes
from torchbop.deploy.xnor_kernel import resolve_backend
from torchbop.errors import UserError
from torchbop.models.memory_format import to_channels_last
from torchbop.nn import BinaryConv2d, BinaryLinear
from torchbop.quantizers import ApproxSign, Sign, SteSign, SwishSign, sign

__all__ = ["PackedModel", "pack_model", "export", "load_packed", "network_records"]

_SIGN_QUANTIZERS = (SteSign, Sign, ApproxSign, SwishSign)  # forward is sign (sign(0) = +1), no randomness
_FIX = "export it again from its checkpoint with `torchbop export RUN_DIR -o FILE`"


# ----------------------------------------------------------------------------------------------------------------------
# Model -> records (a JSON-able description of each layer and its tensors)


def _layers_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    parts = [name for name in ("features", "classifier") if isinstance(getattr(model, name, None), nn.Sequential)]
    if parts != ["features", "classifier"]:
        raise ValueError(f"{type(model).__name__}: cannot read the network; give an nn.Sequential or a model with "
                         "nn.Sequential `features` and `classifier` run in that order (MnistBNN, BinaryNet)")
    return [(f"{part}.{name}", layer) for part in parts for name, layer in getattr(model, part).named_children()]


def _binary_weight(layer: nn.Module, name: str) -> Tensor:
    weight = layer.weight.detach().float().cpu()
    if layer.weight_quantizer is None:
        if not bool(((weight == 1) | (weight == -1)).all()):
            raise ValueError(f"{name}: a weight used as is (mode 'bop') must hold exactly -1 and +1; binarize it "
                             "with torchbop.nn.binarize_ first")
        return weight
    if not isinstance(layer.weight_quantizer, _SIGN_QUANTIZERS):
        raise ValueError(f"{name}: weight quantizer {type(layer.weight_quantizer).__name__} is not supported")
    return sign(weight)  # latent mode: the model binarizes with sign in forward


def _binary_input(layer: nn.Module, name: str) -> bool:
    quantizer = layer.input_quantizer
    if quantizer is None:
        return False
    if not isinstance(quantizer, _SIGN_QUANTIZERS):
        raise ValueError(f"{name}: input quantizer {type(quantizer).__name__} is not supported (deterministic "
                         "sign quantizers only: SteSign, Sign, ApproxSign, SwishSign)")
    return True


def _pack_weight(weight: Tensor) -> Tensor:
    """+-1 weight -> uint8 bits (1 = +1), row-major, LSB first, zero bits to fill the last byte."""
    bits = (weight > 0).flatten()
    return pack_bytes(torch.nn.functional.pad(bits, (0, -bits.numel() % 8)))


def _unpack_weight(bits: Tensor, shape: list[int]) -> Tensor:
    count = 1
    for s in shape:
        count *= s
    unpacked = (bits.unsqueeze(-1) >> torch.arange(8, dtype=torch.uint8)) & 1
    return unpacked.flatten()[:count].float().mul_(2).sub_(1).reshape(shape)


def network_records(model: nn.Module) -> tuple[list[dict[str, Any]], dict[str, Tensor]]:
    """``(layers, tensors)`` describing ``model``'s inference network; ``ValueError`` for what is not supported."""
    records: list[dict[str, Any]] = []
    tensors: dict[str, Tensor] = {}

    def keep(name: str, key: str, value: Tensor | None) -> str | None:
        if value is None:
            return None
        tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
        return f"{name}.{key}"

    for name, layer in _layers_of(model):
        if isinstance(layer, BinaryConv2d):
            if layer.groups != 1 or layer.padding_mode != "zeros":
                raise ValueError(f"{name}: BinaryConv2d with groups={layer.groups}, padding_mode="
                                 f"{layer.padding_mode!r} is not supported (groups 1, zero padding only)")
            weight = _binary_weight(layer, name)
            records.append({"type": "binary_conv2d", "name": name, "shape": list(weight.shape),
                            "stride": list(layer.stride), "dilation": list(layer.dilation),
                            "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
                            "pad": list(layer._reversed_padding_repeated_twice),
                            "pad_value": float(layer.pad_value), "binary_input": _binary_input(layer, name),
                            "weight_bits": keep(name, "weight_bits", _pack_weight(weight)),
                            "bias": keep(name, "bias", layer.bias)})
        elif isinstance(layer, BinaryLinear):
            weight = _binary_weight(layer, name)
            records.append({"type": "binary_linear", "name": name, "shape": list(weight.shape),
                            "binary_input": _binary_input(layer, name),
                            "weight_bits": keep(name, "weight_bits", _pack_weight(weight)),
                            "bias": keep(name, "bias", layer.bias)})
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            if layer.running_mean is None or layer.running_var is None:
                raise ValueError(f"{name}: batch norm without running statistics (track_running_stats=False) "
                                 "normalizes with batch statistics in eval mode; it cannot be exported")
            records.append({"type": "batch_norm", "name": name, "eps": float(layer.eps),
                            "running_mean": keep(name, "running_mean", layer.running_mean),
                            "running_var": keep(name, "running_var", layer.running_var),
                            "weight": keep(name, "weight", layer.weight), "bias": keep(name, "bias", layer.bias)})
        elif isinstance(layer, nn.MaxPool2d):
            records.append({"type": "max_pool2d", "name": name, "kernel_size": layer.kernel_size,
                            "stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation,
                            "ceil_mode": layer.ceil_mode})
        elif isinstance(layer, nn.Flatten):
            records.append({"type": "flatten", "name": name, "start_dim": layer.start_dim,
                            "end_dim": layer.end_dim})
        elif isinstance(layer, (nn.Dropout, nn.Identity)):
            continue  # nothing to do in eval mode
        else:
            raise ValueError(f"{name}: layer type {type(layer).__name__} is not supported by the packed format "
                             "(BinaryConv2d, BinaryLinear, batch norm, MaxPool2d, Flatten, Dropout, Identity)")
    return records, tensors


# ----------------------------------------------------------------------------------------------------------------------
# Records -> PackedModel


class PackedModel(nn.Module):
    """A packed BNN for inference: ``forward(images) -> logits``, exactly the source model's eval-mode forward.

    Built by :func:`pack_model` or :func:`load_packed`; inference only (``train()`` raises, no gradients).

    Args:
        layers: the network's inference modules, in order.
        channels_last: the source model computes in channels_last (its input is converted first, as there).
        input_shape: ``[C, H, W]`` the network was exported for, or None.
    """

    def __init__(self, layers: list[nn.Module], *, channels_last: bool, input_shape: list[int] | None = None
                 ) -> None:
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.channels_last = channels_last
        self.input_shape = input_shape
        self.train(False)

    def train(self, mode: bool = True) -> PackedModel:
        if mode:
            raise RuntimeError("a PackedModel is for inference only; train the source model instead")
        self.training = False
        for module in self.layers.modules():
            module.training = False
        return self

    @torch.inference_mode()
    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = to_channels_last(x)
        return self.layers(x)


def _model_from_records(records: list[dict[str, Any]], tensors: dict[str, Tensor], *, channels_last: bool,
                        input_shape: list[int] | None, backend: str) -> PackedModel:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    layers: list[nn.Module] = []
    for record in records:
        kind = record["type"]

        def tensor(key: str) -> Tensor | None:
            name = record[key]
            return None if name is None else tensors[name]

        if kind in ("binary_conv2d", "binary_linear"):
            weight = _unpack_weight(tensor("weight_bits"), record["shape"])
            if kind == "binary_conv2d":
                padding = record["padding"]
                layers.append(PackedBinaryConv2d(
                    weight, tensor("bias"), stride=tuple(record["stride"]),
                    padding=padding if isinstance(padding, str) else tuple(padding),
                    dilation=tuple(record["dilation"]), pad=tuple(record["pad"]), pad_value=record["pad_value"],
                    binary_input=record["binary_input"], memory_format=memory_format, backend=backend))
            else:
                layers.append(PackedBinaryLinear(weight, tensor("bias"), binary_input=record["binary_input"],
                                                 backend=backend))
        elif kind == "batch_norm":
            layers.append(PackedBatchNorm(tensor("running_mean"), tensor("running_var"), tensor("weight"),
                                          tensor("bias"), record["eps"]))
        elif kind == "max_pool2d":
            layers.append(nn.MaxPool2d(record["kernel_size"], record["stride"], record["padding"],
                                       record["dilation"], ceil_mode=record["ceil_mode"]))
        elif kind == "flatten":
            layers.append(nn.Flatten(record["start_dim"], record["end_dim"]))
        else:
            raise ValueError(f"unknown layer type {kind!r}")
    return PackedModel(layers, channels_last=channels_last, input_shape=input_shape)


def _model_format(model: nn.Module) -> bool:
    return bool(getattr(model, "channels_last", False))


def pack_model(model: nn.Module, *, backend: str = "auto") -> PackedModel:
    """The :class:`PackedModel` of ``model`` (in memory, no file); ``ValueError`` for an unsupported layer.

    Args:
        model: a trained BNN (see the module docstring for what is supported); its eval-mode forward is packed.
        backend: ``"kernel"`` (XNOR-popcount C kernel), ``"torch"`` (float products of +-1) or ``"auto"``.
    """
    records, tensors = network_records(model)
    return _model_from_records(records, tensors, channels_last=_model_format(model), input_shape=None,
                               backend=backend)


def export(model: nn.Module, path: str | os.PathLike[str], *, input_shape: list[int] | None = None,
           overwrite: bool = False, source: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s inference network to the packed file ``path`` and return the path.

    Args:
        model: the trained BNN.
        path: the output file; an existing file is replaced only with ``overwrite``.
        input_shape: ``[C, H, W]`` of its input, recorded for the reader.
        source: JSON-able facts about where the model came from (checkpoint, model name), recorded as is.

    Raises:
        ValueError: the model has a layer the format does not support.
        UserError: ``path`` exists and ``overwrite`` is False.
    """
    records, tensors = network_records(model)
    network = {"layers": records, "channels_last": _model_format(model), "input_shape": input_shape,
               "source": source or {"model": type(model).__name__}}
    write_packed(path, {"network": network}, tensors, overwrite=overwrite)
    return Path(path)


def load_packed(path: str | os.PathLike[str], *, backend: str = "auto") -> PackedModel:
    """The :class:`PackedModel` stored in ``path`` (written by :func:`export` / ``torchbop export``).

    Raises:
        UserError: the file is missing, not a packed model, of another format version, truncated or corrupt, or
            lacks a key it needs; the message names the file and the fix.
    """
    backend = resolve_backend(backend)
    header, tensors = read_packed(path)
    network = header.get("network")
    if not isinstance(network, dict) or not isinstance(network.get("layers"), list):
        raise UserError(f"{path}: header key 'network' is missing or malformed; {_FIX}")
    try:
        return _model_from_records(network["layers"], tensors, channels_last=bool(network.get("channels_last")),
                                   input_shape=network.get("input_shape"), backend=backend)
    except KeyError as error:
        raise UserError(f"{path}: missing key or tensor {error}; {_FIX}") from error
    except (TypeError, ValueError, IndexError) as error:
        raise UserError(f"{path}: malformed network description ({type(error).__name__}: {error}); {_FIX}") \
            from error
