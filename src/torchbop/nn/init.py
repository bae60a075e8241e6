r"""In-place operations on the binary weights of a model: initialisation, binarization, latent-weight clipping.

Each takes a model (any ``nn.Module``), acts on the ``weight`` of every binary layer found by
:func:`torchbop.nn.named_binary_layers`, runs under ``torch.no_grad()`` and returns the model.

- :func:`init_binary_weights_` re-draws the weights from a named scheme, times ``scale``. The scale is what Theorem 1
  of the paper is about: scaling the initial latent weights and the learning rate by the same factor leaves the
  binary trajectory unchanged. In ``"bop"`` mode the draw is binarized, so only its signs matter.
- :func:`binarize_` replaces each binary weight by its sign (e.g. to turn a latent-weight model into a Bop model).
- :func:`clip_latent_weights_` clips latent weights to :math:`[-b, b]`: call it after every optimizer step when
  training latent weights (Courbariaux et al., arXiv:1602.02830).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from torchbop.nn.params import _check_module, named_binary_layers
from torchbop.quantizers import sign

__all__ = ["init_binary_weights_", "binarize_", "clip_latent_weights_", "INIT_SCHEMES"]


def _glorot_uniform(w: Tensor, generator: torch.Generator | None) -> Tensor:
    return nn.init.xavier_uniform_(w, generator=generator)


def _glorot_normal(w: Tensor, generator: torch.Generator | None) -> Tensor:
    return nn.init.xavier_normal_(w, generator=generator)


def _he_normal(w: Tensor, generator: torch.Generator | None) -> Tensor:
    return nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=generator)


def _uniform(w: Tensor, generator: torch.Generator | None) -> Tensor:
    return nn.init.uniform_(w, -1.0, 1.0, generator=generator)


#: name -> in-place initializer ``f(weight, generator)``.
INIT_SCHEMES: dict[str, Callable[[Tensor, torch.Generator | None], Tensor]] = {
    "glorot_uniform": _glorot_uniform,
    "glorot_normal": _glorot_normal,
    "he_normal": _he_normal,
    "uniform": _uniform,
}


@torch.no_grad()
def init_binary_weights_(
    model: nn.Module,
    scheme: str = "glorot_uniform",
    scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    r"""Re-initialise every binary weight of ``model`` in place: ``scale * draw``, binarized in ``"bop"`` mode.

    Schemes (:math:`n_i`, :math:`n_o`: fan-in and fan-out, kernel area included):

    - ``"glorot_uniform"``: :math:`U(-a, a)`, :math:`a = \sqrt{6 / (n_i + n_o)}` (Keras' default);
    - ``"glorot_normal"``: :math:`N(0, 2 / (n_i + n_o))` (``nn.init.xavier_normal_``; Keras truncates at 2 std);
    - ``"he_normal"``: :math:`N(0, 2 / n_i)` (``nn.init.kaiming_normal_``; Keras truncates at 2 std);
    - ``"uniform"``: :math:`U(-1, 1)`.

    Biases, batch norm and non-binary layers are left alone.

    Args:
        model: the network.
        scheme: one of ``INIT_SCHEMES``.
        scale: factor > 0 applied to every draw (experiment 2 uses 0.01).
        generator: for reproducible draws; must live on the weights' device.

    Returns:
        ``model``.

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> layer = BinaryLinear(100, 100, mode="latent")
        >>> _ = init_binary_weights_(layer, "uniform", scale=0.01, generator=torch.Generator().manual_seed(0))
        >>> bool(layer.weight.abs().max() <= 0.01)
        True
    """
    _check_module(model, "init_binary_weights_")
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"Invalid scheme: {scheme!r} (expected one of {sorted(INIT_SCHEMES)})")
    if not (isinstance(scale, (int, float)) and 0 < scale < math.inf):
        raise ValueError(f"Invalid scale: {scale} (must be a finite number > 0)")
    init = INIT_SCHEMES[scheme]
    for _, layer in named_binary_layers(model):
        w = layer.weight
        init(w, generator)
        if scale != 1.0:
            w.mul_(scale)
        if layer.mode == "bop":
            w.copy_(sign(w))
    return model


@torch.no_grad()
def binarize_(model: nn.Module) -> nn.Module:
    r"""Replace every binary weight of ``model`` by its sign, in place (:math:`\operatorname{sign}(0) = +1`).

    Applies to binary layers of both modes. Bop-mode weights are binary already and stay unchanged.

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> layer = BinaryLinear(2, 2, mode="latent")
        >>> _ = layer.weight.data.copy_(torch.tensor([[0.3, -0.2], [0.0, -1.5]]))
        >>> binarize_(layer).weight
        Parameter containing:
        tensor([[ 1., -1.],
                [ 1., -1.]], requires_grad=True)
    """
    _check_module(model, "binarize_")
    for _, layer in named_binary_layers(model):
        layer.weight.copy_(sign(layer.weight))
    return model


@torch.no_grad()
def clip_latent_weights_(model: nn.Module, bound: float = 1.0) -> nn.Module:
    r"""Clip the weights of every ``"latent"``-mode binary layer of ``model`` to :math:`[-b, b]`, in place.

    Outside :math:`[-1, 1]` the STE gradient of the weight is zero with ``clip_value=1``, so an unclipped latent
    weight could drift away and never come back. ``"bop"``-mode layers are not touched.

    Args:
        model: the network.
        bound: :math:`b > 0`.

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> layer = BinaryLinear(2, 1, mode="latent")
        >>> _ = layer.weight.data.copy_(torch.tensor([[3.0, -0.5]]))
        >>> clip_latent_weights_(layer).weight.data
        tensor([[ 1.0000, -0.5000]])
    """
    _check_module(model, "clip_latent_weights_")
    if not (isinstance(bound, (int, float)) and bound > 0):
        raise ValueError(f"Invalid bound: {bound} (must be > 0)")
    for _, layer in named_binary_layers(model):
        if layer.mode == "latent":
            layer.weight.clamp_(-bound, bound)
    return model
