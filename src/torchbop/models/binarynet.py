r"""BinaryNet for CIFAR-10 (Courbariaux et al., arXiv:1602.02830), as trained with Bop in arXiv:1906.02107.

The network is a VGG-like stack written as a layer list (``CFG``, in the manner of timm's ``vgg.py``): numbers are 3x3
convolutions with that many output channels, ``"M"`` is a 2x2 max pooling. Then three dense layers (``HIDDEN`` units
and the classes). Every convolution and dense layer is followed, after its pooling if it has one, by batch norm; the
sign activation that follows each batch norm is the next layer's ``input_quantizer``. The output is the last batch
norm's output: the logits (softmax lives in the loss).

``variant="original"`` is the network of the paper's code (Larq / Keras), which reached 91.3%:

======================================  ==============================  ==============================================
layer                                   output (width 1)                notes
======================================  ==============================  ==============================================
BinaryConv2d 3->128 (valid), BN        128 x 30 x 30                   real input (no input quantizer)
BinaryConv2d 128->128, maxpool, BN      128 x 15 x 15                   'same' zero padding from here on
BinaryConv2d 128->256, BN               256 x 15 x 15
BinaryConv2d 256->256, maxpool, BN      256 x 7 x 7
BinaryConv2d 256->512, BN               512 x 7 x 7
BinaryConv2d 512->512, maxpool, BN      512 x 3 x 3
flatten                                 4608
BinaryLinear 4608->1024, BN             1024
BinaryLinear 1024->1024, BN             1024
BinaryLinear 1024->10, BN               10                              logits
======================================  ==============================  ==============================================

No layer has a bias, batch norm has a shift and no scale (:class:`~torchbop.nn.ShiftBatchNorm2d`, eps 1e-3, torch
momentum 0.01 = Keras momentum 0.99), and there are 10,352,000 binary weights.

``variant="reproduction"`` is the network of the NeurIPS 2019 reproducibility report's PyTorch code, which reached
88.67%. It differs in: a bias on every convolution and dense layer; affine batch norm with scale and shift and torch's
defaults (eps 1e-5, momentum 0.1), except the last, which has neither (``affine=False``); and padding 1 on the first
convolution, so the feature map stays 32 x 32 and the flatten has 512 * 4 * 4 = 8192 features. Two further details
of that code (``research_seed/cifar/cifar.py`` in the version read) are *not* copied, as they look like slips rather
than design: its layers never binarized their inputs (hardtanh activations, no sign), and it binarized the biases
and handed them to Bop. Here inputs are binarized as in the original, and biases are real, for the other optimizer.

``binarize=False`` builds the float twin: same shapes, ``nn.Conv2d`` / ``nn.Linear`` (torch's default init), no
quantizers, and ``nn.Hardtanh`` where the binary network has its sign activations (hardtanh is the real function
whose derivative is the straight-through estimator's). It exists to compare speed and accuracy with the BNN.

``width`` multiplies every channel and hidden-unit count (rounded, at least 1); the number of classes stays.

Memory format: with ``channels_last=True`` (the default) the network puts its input in ``torch.channels_last``, so
it runs on NHWC activations whatever layout the input comes in, which is faster on CPU (a training step at width 1/8,
batch 100: 0.69x the CPU time of NCHW on a 2-core CPU; ``benchmarks/train_step.py`` measures both) and on GPUs with
tensor cores. Parameters keep torch's default layout, and the outputs are the same in both formats up to float
rounding (see :mod:`torchbop.models.memory_format`). ``channels_last=False`` computes in NCHW.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn

from torchbop.models.memory_format import memory_format_of, to_channels_last
from torchbop.nn import BinaryConv2d, BinaryLinear, ShiftBatchNorm1d, ShiftBatchNorm2d
from torchbop.nn.layers import MODES

__all__ = ["BinaryNet", "CFG", "HIDDEN", "VARIANTS"]

#: Convolutions (output channels, all 3x3, stride 1) and 2x2 max poolings ("M") of the feature extractor.
CFG: list[int | str] = [128, 128, "M", 256, 256, "M", 512, 512, "M"]
#: Hidden units of the two dense layers before the classifier.
HIDDEN: list[int] = [1024, 1024]
#: Supported values of ``variant``.
VARIANTS = ("original", "reproduction")


def _scaled(n: int, width: float) -> int:
    return max(1, round(n * width))


class BinaryNet(nn.Module):
    r"""BinaryNet for 32x32 RGB images (CIFAR-10); see the module docstring for the layer table and the variants.

    Args:
        width: multiplier > 0 of every channel and hidden-unit count (``0.25`` gives 32-64-128 channels, 256 units).
        variant: ``"original"`` (the paper's code) or ``"reproduction"`` (the reproducibility report's PyTorch code).
        mode: ``"bop"`` (binary weights trained by Bop) or ``"latent"`` (latent weights trained by SGD/Adam);
            not used when ``binarize=False``.
        binarize: ``False`` builds the float twin with the same shapes.
        num_classes: outputs of the last layer.
        channels_last: compute in ``torch.channels_last`` (NHWC activations; see the module docstring).

    Example:
        >>> import torch
        >>> from torchbop.nn import named_binary_parameters
        >>> model = BinaryNet()
        >>> sum(w.numel() for _, w in named_binary_parameters(model))
        10352000
        >>> model.features[0]
        BinaryConv2d(3, 128, kernel_size=(3, 3), stride=(1, 1), bias=False, mode=bop)
        >>> BinaryNet(width=0.25)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> BinaryNet(variant="reproduction").classifier[1].in_features
        8192
    """

    def __init__(
        self,
        width: float = 1.0,
        variant: str = "original",
        mode: str = "bop",
        binarize: bool = True,
        num_classes: int = 10,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if not (isinstance(width, (int, float)) and width > 0):
            raise ValueError(f"Invalid width: {width} (must be > 0)")
        if variant not in VARIANTS:
            raise ValueError(f"Invalid variant: {variant!r} (expected one of {VARIANTS})")
        if mode not in MODES:
            raise ValueError(f"Invalid mode: {mode!r} (expected one of {MODES})")
        if not (isinstance(num_classes, int) and num_classes >= 1):
            raise ValueError(f"Invalid num_classes: {num_classes} (must be an int >= 1)")
        if not isinstance(channels_last, bool):
            raise ValueError(f"Invalid channels_last: {channels_last!r} (must be true or false)")
        self.width, self.variant, self.mode, self.binarize = width, variant, mode, binarize
        self.num_classes = num_classes

        reproduction = variant == "reproduction"
        bias = reproduction
        if reproduction:
            norm2d: Callable[[int], nn.Module] = nn.BatchNorm2d
            norm1d: Callable[[int], nn.Module] = nn.BatchNorm1d
            last_norm: Callable[[int], nn.Module] = partial(nn.BatchNorm1d, affine=False)
        else:
            norm2d, norm1d, last_norm = ShiftBatchNorm2d, ShiftBatchNorm1d, ShiftBatchNorm1d

        # Layer injection: a binary layer binarizes its own input (except the first); the float twin gets an
        # explicit hardtanh in the same place.
        conv: Callable[..., nn.Module]
        linear: Callable[..., nn.Module]
        if binarize:
            conv, linear = partial(BinaryConv2d, mode=mode), partial(BinaryLinear, mode=mode)
            first = {"input_quantizer": None}
        else:
            conv, linear, first = nn.Conv2d, nn.Linear, {}

        def activation() -> list[nn.Module]:
            return [] if binarize else [nn.Hardtanh()]

        cfg = [v if v == "M" else _scaled(v, width) for v in CFG]
        # Features: the first convolution takes the real image; the batch norm of a convolution comes after its pool.
        channels = cfg[0]
        layers: list[nn.Module] = [conv(3, channels, 3, padding=1 if reproduction else 0, bias=bias, **first)]
        for v in cfg[1:]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [norm2d(channels), *activation(), conv(channels, v, 3, padding=1, bias=bias)]
            channels = v
        layers.append(norm2d(channels))
        self.features = nn.Sequential(*layers)

        spatial = 4 if reproduction else 3  # 32 (or 30 after the valid first conv), halved three times
        units = [channels * spatial * spatial] + [_scaled(u, width) for u in HIDDEN] + [num_classes]
        head: list[nn.Module] = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(units[:-1], units[1:])):
            is_last = i == len(units) - 2
            head += [*activation(), linear(n_in, n_out, bias=bias), (last_norm if is_last else norm1d)(n_out)]
        self.classifier = nn.Sequential(*head)
        self.channels_last = channels_last
        self.memory_format = memory_format_of(channels_last)  # what the training engine's loader produces

    def forward_features(self, x: Tensor) -> Tensor:
        """The convolutional part: ``[N, 3, 32, 32]`` images in [-1, 1] to batch-normed feature maps (channels_last
        when the model is)."""
        if self.channels_last:
            x = to_channels_last(x)
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """Flatten and the three dense layers: feature maps to logits ``[N, num_classes]``."""
        return self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def extra_repr(self) -> str:
        return f"width={self.width}, variant={self.variant}, mode={self.mode}, binarize={self.binarize}" + (
            "" if self.channels_last else ", channels_last=False"
        )
