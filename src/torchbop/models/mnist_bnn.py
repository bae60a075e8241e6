r"""The MNIST BNN of the reproducibility report (section 3.1.1), used by experiments 1 and 2.

Three binary convolution blocks (32, 64, 64 filters, 3x3, stride 1) with 2x2 max pooling and batch norm, then two
binary dense blocks (64 and 10 units) with batch norm. The first convolution takes the real image (no input
quantizer, but binary weights); every other layer binarizes its input with the straight-through sign, which is thus
the activation after each batch norm. The output is the last batch norm's output: the logits.

Batch norm has a shift and no scale, with Keras' defaults (:class:`~torchbop.nn.ShiftBatchNorm2d`: eps 1e-3, torch
momentum 0.01), as in the report's Larq script (``BatchNormalization(scale=False)``). Layers have no bias.

Two paddings, both ending in 64 * 3 * 3 = 576 features and with identical parameters:

- ``padding="same"`` (default): the description in SPEC section 4, every block pooled:
  28 -> conv 28 -> pool 14 -> conv 14 -> pool 7 -> conv 7 -> pool 3.
- ``padding="valid"``: the report's Larq script (``larq_approximation_viewpoint_mnist.py``), no padding and no pool
  in the third block: 28 -> conv 26 -> pool 13 -> conv 11 -> pool 5 -> conv 3.

Memory format: with ``channels_last=True`` (the default) the network puts its input in ``torch.channels_last``, so
the convolutions, max poolings and batch norms run on NHWC activations whatever layout the input comes in: measured
on a 2-core CPU, a training step of batch 100 takes 0.61x the CPU time of the NCHW step (max pooling in NCHW alone
was 31% of that step). Parameters keep torch's default layout, and the outputs are the same in both formats up to
float rounding (see :mod:`torchbop.models.memory_format`). ``channels_last=False`` computes in NCHW.
"""

from __future__ import annotations

from torch import Tensor, nn

from torchbop.models.memory_format import memory_format_of, to_channels_last
from torchbop.nn import BinaryConv2d, BinaryLinear, ShiftBatchNorm1d, ShiftBatchNorm2d
from torchbop.nn.layers import MODES

__all__ = ["MnistBNN"]

_PADDINGS = ("same", "valid")


class MnistBNN(nn.Module):
    r"""The MNIST BNN: 3 binary conv blocks (32, 64, 64) and 2 binary dense blocks (64, 10), batch norm after each.

    Args:
        mode: ``"bop"`` (binary weights trained by Bop) or ``"latent"`` (latent weights trained by SGD/Adam).
        padding: ``"same"`` (every block pooled) or ``"valid"`` (the report's script); see the module docstring.
        num_classes: outputs of the last layer.
        channels_last: compute in ``torch.channels_last`` (NHWC activations; see the module docstring).

    Example:
        >>> import torch
        >>> model = MnistBNN(mode="latent")
        >>> model(torch.rand(4, 1, 28, 28) * 2 - 1).shape
        torch.Size([4, 10])
        >>> model.classifier[1]
        BinaryLinear(
          in_features=576, out_features=64, bias=False, mode=latent
          (input_quantizer): SteSign(clip_value=1.0)
          (weight_quantizer): SteSign(clip_value=1.0)
        )
    """

    def __init__(
        self, mode: str = "bop", padding: str = "same", num_classes: int = 10, channels_last: bool = True
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
        if padding not in _PADDINGS:
            raise ValueError(f"Invalid padding: {padding!r} (expected one of {_PADDINGS})")
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"Invalid num_classes: {num_classes} (must be an int >= 1)")
        if not isinstance(channels_last, bool):
            raise ValueError(f"Invalid channels_last: {channels_last!r} (must be true or false)")
        self.mode, self.padding, self.num_classes = mode, padding, num_classes

        pad = 1 if padding == "same" else 0
        pooled = (True, True, padding == "same")
        layers: list[nn.Module] = []
        in_ch = 1
        for i, (out_ch, pool) in enumerate(zip((32, 64, 64), pooled)):
            extra = {"input_quantizer": None} if i == 0 else {}  # the first layer sees real pixels
            layers.append(BinaryConv2d(in_ch, out_ch, 3, padding=pad, mode=mode, **extra))
            if pool:
                layers.append(nn.MaxPool2d(2))
            layers.append(ShiftBatchNorm2d(out_ch))
            in_ch = out_ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            BinaryLinear(64 * 3 * 3, 64, mode=mode),
            ShiftBatchNorm1d(64),
            BinaryLinear(64, num_classes, mode=mode),
            ShiftBatchNorm1d(num_classes),
        )
        self.channels_last = channels_last
        self.memory_format = memory_format_of(channels_last)  # what the training engine's loader produces

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            x = to_channels_last(x)
        return self.classifier(self.features(x))

    def extra_repr(self) -> str:
        return f"mode={self.mode}, padding={self.padding}" + ("" if self.channels_last else ", channels_last=False")
