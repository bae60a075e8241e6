"""Memory layouts of image batches: NCHW (torch's default) and channels_last (NHWC memory, ``[N, C, H, W]`` shape).

A tensor's *shape* is always ``[N, C, H, W]``; its *strides* say which layout its memory has. Convolutions, max
pooling and batch norm read the strides to choose their kernels, and on CPU (oneDNN) and on GPUs with tensor cores the
NHWC ones are faster (see :mod:`torchbop.models.memory_format`). The loader (:class:`torchbop.data.DeviceLoader`)
builds batches in either layout, the models convert their input with :func:`to_channels_last`.

Example:
    >>> import torch
    >>> x = to_channels_last(torch.zeros(2, 1, 28, 28))
    >>> x.stride(), is_channels_last(x)
    ((784, 1, 28, 1), True)
    >>> to_channels_last(x) is x
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["is_channels_last", "to_channels_last"]


def is_channels_last(x: Tensor) -> bool:
    """True for a 4-D tensor laid out as ``[N, H, W, C]`` in memory (torch's channels_last strides).

    With one channel, NCHW and NHWC are the same bytes and torch calls such a tensor contiguous in both formats; the
    strides (stride 1 on the channel dimension) still say which layout the tensor was made in, and they are what a
    convolution reads to choose its memory format.
    """
    return x.dim() == 4 and x.stride(1) == 1 and x.permute(0, 2, 3, 1).is_contiguous()


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` in channels_last strides: ``x`` itself when it already is (or is not 4-D), else an NHWC copy
    (differentiable).

    Unlike ``x.contiguous(memory_format=torch.channels_last)``, which returns a one-channel NCHW tensor unchanged
    (it is contiguous in both formats), this gives one-channel images (MNIST) channels_last strides too.
    """
    if x.dim() != 4 or is_channels_last(x):
        return x
    return torch.empty_like(x, memory_format=torch.channels_last).copy_(x)
