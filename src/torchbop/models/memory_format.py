"""The memory format the convolution models compute in: ``torch.channels_last`` (NHWC activations).

On CPU (oneDNN) and on GPUs with tensor cores, convolutions, max pooling and batch norm run faster on NHWC memory
than on torch's default NCHW: measured on a 2-core CPU, a training step of the MNIST BNN at batch 100 took 0.61x the
NCHW step's CPU time and BinaryNet at width 1/8 0.69x (NCHW max pooling alone was 31% of the MNIST step).

The models put their *input* in channels_last (:func:`~torchbop.data.layout.to_channels_last`); every convolution whose
input is channels_last returns channels_last, so the whole feature extractor follows, while the parameters keep torch's
default layout (a weight's gradient is copied back to that layout, a few microseconds per step). So state dicts,
checkpoints and optimizers (``Bop(fused=True)`` flattens each weight with ``view(-1)``) see the same tensors as in
NCHW. The outputs do not depend on the format beyond float rounding (the binary layers' +-1 sums are exact).

A model declares its format in a ``memory_format`` attribute, which :func:`input_memory_format` reads: the training
engine asks its loader for batches in that format, so that the model's conversion costs nothing.

Example:
    >>> from torchbop.models import MnistBNN
    >>> input_memory_format(MnistBNN()), input_memory_format(MnistBNN(channels_last=False))
    (torch.channels_last, torch.contiguous_format)
"""

from __future__ import annotations

import torch
from torch import nn

from torchbop.data.layout import is_channels_last, to_channels_last

__all__ = ["is_channels_last", "to_channels_last", "input_memory_format", "memory_format_of"]


def memory_format_of(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``."""
    return torch.channels_last if channels_last else torch.contiguous_format


def input_memory_format(model: nn.Module) -> torch.memory_format:
    """The memory format ``model`` wants its input batches in: its ``memory_format`` attribute, else NCHW."""
    value = getattr(model, "memory_format", None)
    return value if isinstance(value, torch.memory_format) else torch.contiguous_format
