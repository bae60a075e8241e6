r"""``summary(model, input_size)``: a BNN's parameters, memory and multiply-accumulates per layer, as Larq shows them.

One row per layer (``larq.models.summary``; layers inside residual blocks and other modules included, each counted
once, the blocks themselves not): its type, output shape, binary parameters, float parameters, memory
with binary weights at 1 bit and everything else at its dtype, and multiply-accumulates (MACs) by precision. Then
the totals, the memory of the same network in float32 ("float-32 equivalent") and the compression ratio.

Conventions (Larq's):

- **Binary parameters** are the weights of binary layers (``is_binary``, :func:`torchbop.nn.split_binary_params`):
  1 bit each. **Float parameters** are all other parameters *and* the running statistics of batch norm, which
  inference needs (Keras counts them as non-trainable parameters); ``num_batches_tracked`` is not counted.
- **MACs** of a convolution (1-D or 2-D, any groups: depthwise too) are ``output positions * C_out * (C_in /
  groups) * kernel size``, of a dense layer ``in * out``, per image; other layers have none. They are **binary
  MACs** when both operands are binary: a binary layer with an input quantizer, or one whose input is the output of
  an ``RSign`` or a sign quantizer used as a layer (ReActNet). The first layer (real input, binary weights) and
  float layers count as float MACs.
- ``input_size`` is one input with or without the batch dimension: ``(3, 32, 32)`` or torchinfo's
  ``(1, 3, 32, 32)``. The first convolution says how many dimensions an image has; a model without one reads a
  leading 1 as the batch dimension.
- Memory is in bytes (the table shows KiB = 1024 bytes): ``binary / 8 + float params * bytes per element``.

Example:
    >>> from torchbop.models import MnistBNN
    >>> s = summary(MnistBNN(), (1, 28, 28))
    >>> s.binary_params, s.float_params, s.binary_macs, s.float_macs
    (93088, 702, 5456512, 225792)
    >>> print(s)  # doctest: +ELLIPSIS
    Layer...Type...Output shape...Binary params...Float MACs
    ...
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from torchbop.deploy.graph_tracer import SIGN_QUANTIZERS, is_unit
from torchbop.nn import RSign

__all__ = ["LayerSummary", "ModelSummary", "summary"]


@dataclass(frozen=True)
class LayerSummary:
    """One row: a layer's name, type, output shape (per image), parameters, memory in bytes and MACs per image."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    binary_params: int
    float_params: int
    memory_bytes: float
    binary_macs: int
    float_macs: int


@dataclass(frozen=True)
class ModelSummary:
    """The rows and their totals; ``str()`` renders the table."""

    rows: tuple[LayerSummary, ...]
    float_bytes_per_param: int = 4

    @property
    def binary_params(self) -> int:
        return sum(r.binary_params for r in self.rows)

    @property
    def float_params(self) -> int:
        return sum(r.float_params for r in self.rows)

    @property
    def total_params(self) -> int:
        return self.binary_params + self.float_params

    @property
    def memory_bytes(self) -> float:
        """Binary weights at 1 bit, the rest at their dtype."""
        return sum(r.memory_bytes for r in self.rows)

    @property
    def float32_bytes(self) -> int:
        """The same network with every parameter in float32."""
        return 4 * self.total_params

    @property
    def compression_ratio(self) -> float:
        return self.float32_bytes / self.memory_bytes if self.memory_bytes else float("nan")

    @property
    def binary_macs(self) -> int:
        return sum(r.binary_macs for r in self.rows)

    @property
    def float_macs(self) -> int:
        return sum(r.float_macs for r in self.rows)

    def __str__(self) -> str:
        header = (
            "Layer",
            "Type",
            "Output shape",
            "Binary params",
            "Float params",
            "Memory (KiB)",
            "Binary MACs",
            "Float MACs",
        )
        lines = [
            (
                r.name,
                r.type,
                "x".join(map(str, r.output_shape)) or "-",
                f"{r.binary_params:,}",
                f"{r.float_params:,}",
                f"{r.memory_bytes / 1024:,.2f}",
                f"{r.binary_macs:,}",
                f"{r.float_macs:,}",
            )
            for r in self.rows
        ]
        lines.append(
            (
                "Total",
                "",
                "",
                f"{self.binary_params:,}",
                f"{self.float_params:,}",
                f"{self.memory_bytes / 1024:,.2f}",
                f"{self.binary_macs:,}",
                f"{self.float_macs:,}",
            )
        )
        widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]

        def render(row: Sequence[str]) -> str:
            cells = [cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
            return "  ".join(cells).rstrip()

        rule = "  ".join("-" * w for w in widths)
        macs = self.binary_macs + self.float_macs
        share = f" ({100 * self.binary_macs / macs:.2f}% binary)" if macs else ""
        totals = [
            f"Total params: {self.total_params:,} ({self.binary_params:,} binary, {self.float_params:,} float)",
            f"Memory with 1-bit binary weights: {self.memory_bytes:,.0f} bytes ({self.memory_bytes / 2**20:.2f} MiB)",
            f"Float-32 equivalent: {self.float32_bytes:,} bytes ({self.float32_bytes / 2**20:.2f} MiB)",
            f"Compression ratio of memory: {self.compression_ratio:.2f}",
            f"MACs per image: {macs:,}{share}: {self.binary_macs:,} binary, {self.float_macs:,} float",
        ]
        return "\n".join([render(header), rule, *map(render, lines[:-1]), rule, render(lines[-1]), "", *totals])


def _layers(model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """``(name, module, whole)`` of the model's layers. A binary layer, ``RSign``, ``RPReLU``, batch norm or
    quantizer is one layer with whatever it holds (``whole``); otherwise a module without children is a layer, and
    a module with children (a container, a residual block, the model) is not, unless it holds parameters or buffers
    of its own (they get a row, its children theirs)."""
    layers = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if is_unit(module):
            inside.append(name)
            layers.append((name or type(model).__name__, module, True))
        elif not any(True for _ in module.children()):
            layers.append((name or type(model).__name__, module, True))
        elif any(True for _ in module.parameters(recurse=False)) or any(
            b.is_floating_point() for _, b in module.named_buffers(recurse=False)
        ):
            layers.append((name or type(model).__name__, module, False))
    return layers


def _count(layer: nn.Module, whole: bool) -> tuple[int, int, float]:
    """``(binary params, float params, memory in bytes)`` of one layer (``whole``: with its children's)."""
    binary = floats = 0
    memory = 0.0
    weight = getattr(layer, "weight", None) if getattr(layer, "is_binary", False) else None
    for param in layer.parameters(recurse=whole):
        if param is weight:
            binary += param.numel()
            memory += param.numel() / 8
        else:
            floats += param.numel()
            memory += param.numel() * param.element_size()
    for name, buffer in layer.named_buffers(recurse=whole):
        if buffer.is_floating_point() and not name.endswith("num_batches_tracked"):
            floats += buffer.numel()
            memory += buffer.numel() * buffer.element_size()
    return binary, floats, memory


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _macs(layer: nn.Module, output: torch.Tensor, sign_input: bool) -> tuple[int, int]:
    """``(binary MACs, float MACs)`` per image; ``sign_input``: the layer's input came from a sign."""
    if isinstance(layer, _CONVS):
        per_output = layer.in_channels // layer.groups
        for k in layer.kernel_size:
            per_output *= k
        macs = output[0].numel() * per_output
    elif isinstance(layer, nn.Linear):
        macs = (output[0].numel() // layer.out_features) * layer.in_features * layer.out_features
    else:
        return 0, 0
    binary = getattr(layer, "is_binary", False) and (getattr(layer, "input_quantizer", None) is not None or sign_input)
    return (macs, 0) if binary else (0, macs)


def _input_shape(model: nn.Module, input_size: Sequence[int]) -> tuple[int, ...]:
    """The shape of the summary's input batch: ``input_size`` if it has the batch dimension, else ``(1, *size)``."""
    size = tuple(input_size) if isinstance(input_size, Sequence) else None
    if not size or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(
            f"Invalid input_size: {input_size!r} (expected positive ints, one image with or without "
            "the batch dimension: (3, 32, 32) or (1, 3, 32, 32))"
        )
    conv = next((m for m in model.modules() if isinstance(m, _CONVS)), None)
    if conv is None:
        return size if len(size) > 1 and size[0] == 1 else (1, *size)
    rank = len(conv.kernel_size) + 1  # channels and the spatial dimensions
    if len(size) == rank:
        return (1, *size)
    if len(size) == rank + 1:
        return size
    raise ValueError(
        f"Invalid input_size: {input_size!r} ({type(conv).__name__} models take {rank} dimensions per "
        f"image: give {rank} dimensions, or {rank + 1} with the batch dimension first)"
    )


@torch.no_grad()
def summary(model: nn.Module, input_size: Sequence[int], *, dtype: torch.dtype = torch.float32) -> ModelSummary:
    """Summarize ``model`` for inputs of shape ``input_size``: one image, ``(3, 32, 32)``, or with the batch
    dimension first as torchinfo takes it, ``(1, 3, 32, 32)`` (the numbers are per image either way).

    Runs one forward pass of zeros in eval mode (the mode is restored afterwards) to see each layer's output.

    Raises:
        ValueError: ``input_size`` has the wrong number of dimensions for the model.
    """
    shape = _input_shape(model, input_size)
    layers = _layers(model)
    outputs: dict[int, torch.Tensor] = {}
    sign_outputs: set[int] = set()  # ids of tensors made by RSign or a sign quantizer (kept alive in outputs)
    sign_fed: set[int] = set()  # ids of binary layers that read one of them

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        outputs[id(module)] = output
        if isinstance(module, (RSign, *SIGN_QUANTIZERS)):
            sign_outputs.add(id(output))
        if getattr(module, "is_binary", False) and inputs and id(inputs[0]) in sign_outputs:
            sign_fed.add(id(module))

    hooks = [module.register_forward_hook(hook) for _, module, _ in layers]
    was_training = model.training
    try:
        model.eval()
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        model(torch.zeros(shape, dtype=dtype, device=device))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    rows = []
    for name, module, whole in layers:
        output = outputs.get(id(module))
        shape_out = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else ()
        binary, floats, memory = _count(module, whole)
        binary_macs, float_macs = (
            _macs(module, output, id(module) in sign_fed) if isinstance(output, torch.Tensor) else (0, 0)
        )
        rows.append(
            LayerSummary(name, type(module).__name__, shape_out, binary, floats, memory, binary_macs, float_macs)
        )
    return ModelSummary(tuple(rows))
