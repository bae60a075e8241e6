r"""Flip metrics: how many binary weights change sign, per step, per layer and for the whole model.

The reproducibility report measures Bop's activity by the log flip ratio of eq. (7),

.. math::
    \pi_t = \ln\left(\frac{\text{number of sign changes at step } t}{\text{number of binary weights}} + 10^{-9}\right),

per layer and for the network, and stops training early when no weight flipped for 10 consecutive epochs.

:class:`FlipCounter` takes the counts from Bop itself when it can (Bop reports ``state[p]["flips"]`` from the same
pass that flips the weights, so counting costs nothing more), and otherwise compares the weights' signs before and
after the step, which works for latent-weight training with any optimizer (the sign of a latent weight is its binary
value; ``sign(0) = +1``).

:func:`latent_at_clip` is the latent-weight counterpart: the fraction of latent weights at the clip (``|w| >= 1``),
where the STE's saturation gives them no gradient and clipping holds them, the two parts of latent-weight training
that depend on the weights' magnitude (and so break Theorem 1's scale invariance when they act).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from torchbop.nn import named_binary_layers
from torchbop.optim import Bop

__all__ = ["FlipCounter", "count_sign_flips", "latent_at_clip", "log_flip_ratio"]

PI_EPS = 1e-9


def log_flip_ratio(flips: Tensor | int, total: int) -> Tensor:
    r"""``pi_t = ln(flips / total + 1e-9)`` of eq. (7); ``ln(1e-9) = -20.7`` means no flip at all.

    Example:
        >>> round(float(log_flip_ratio(0, 1000)), 2)
        -20.72
        >>> round(float(log_flip_ratio(10, 1000)), 4)  # ln(0.01 + 1e-9)
        -4.6052
    """
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    flips = torch.as_tensor(flips, dtype=torch.float64)
    return torch.log(flips / total + PI_EPS)


def count_sign_flips(before: Tensor, after: Tensor) -> Tensor:
    """Number of entries whose binary value (``sign`` with ``sign(0) = +1``) differs between two weight tensors.

    Example:
        >>> count_sign_flips(torch.tensor([0.5, -0.2, 0.0]), torch.tensor([-0.5, -0.1, 0.3]))
        tensor(1)
    """
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {tuple(before.shape)} vs {tuple(after.shape)}")
    return torch.count_nonzero((before < 0) != (after < 0))


@torch.no_grad()
def latent_at_clip(model: nn.Module, clip_value: float = 1.0) -> float:
    """Fraction of the latent weights of ``model``'s latent-mode binary layers with ``|w| >= clip_value``; NaN when
    it has none.

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> layer = BinaryLinear(2, 2, mode="latent")
        >>> _ = layer.weight.data.copy_(torch.tensor([[1.0, -0.5], [-1.0, 0.25]]))
        >>> latent_at_clip(layer)
        0.5
    """
    weights = [layer.weight for _, layer in named_binary_layers(model) if layer.mode == "latent"]
    total = sum(w.numel() for w in weights)
    if total == 0:
        return float("nan")
    return sum(int(torch.count_nonzero(w.abs() >= clip_value)) for w in weights) / total


class FlipCounter:
    r"""Counts the flips of every binary layer of a model, step by step and per epoch.

    Call :meth:`after_step` after each ``optimizer.step()``; it returns this step's flips per layer (0-dim int64
    tensors, left on the weights' device so that no host sync is forced). :attr:`last_total` and :attr:`last_pi_t`
    hold the whole-model count and eq. (7)'s ``pi_t`` of that step; :attr:`epoch_flips` / :attr:`epoch_total`
    accumulate until :meth:`reset_epoch`.

    Where ``optimizer`` is a :class:`~torchbop.optim.Bop` (directly or inside a
    :class:`~torchbop.optim.CompositeOptimizer`) the counts are Bop's own ``state[p]["flips"]``: no pass over the
    weights. For any other optimizer the counter keeps the sign of each weight (one byte per weight) and compares
    it after the step. :meth:`before_step` re-takes that snapshot; it is only needed when something other than the
    optimizer changed the weights since the last :meth:`after_step` (e.g. a checkpoint was loaded).

    **Cost per step.** The per-layer counts of a step are stacked into one device vector and added to the epoch's
    vector: two small kernels per step whatever the number of layers (plus one count per layer that Bop does not
    report on), and never a host sync. Totals and ``pi_t`` (:attr:`last_total`, :attr:`last_pi_t`,
    :attr:`epoch_total`, :attr:`epoch_flips`) are computed from those vectors when they are read, so a training
    loop that reads them only every N steps (as :class:`~torchbop.training.BinaryClassifier` does when it logs)
    pays for them only then. Reading one as a Python number (``int(counter.epoch_total)``) is a host sync.

    Args:
        model: the network; its binary layers are found by ``torchbop.nn.named_binary_layers``.
        optimizer: the optimizer training it, to read Bop's flip counts. Optional.

    Example:
        >>> from torchbop.nn import BinaryLinear
        >>> model = nn.Sequential(BinaryLinear(4, 3, mode="latent"))
        >>> counter = FlipCounter(model)
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.ones(3, 4))
        ...     counter.before_step()
        ...     model[0].weight[0, :2] = -1.0  # what an optimizer step might do
        >>> counter.after_step()
        {'0': tensor(2)}
        >>> counter.total_binary_params, round(float(counter.last_pi_t), 3)  # ln(2/12 + 1e-9)
        (12, -1.792)
    """

    def __init__(self, model: nn.Module, optimizer: Optimizer | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Expected nn.Module, got {type(model).__name__}")
        self.layers = {name: layer.weight for name, layer in named_binary_layers(model)}
        if not self.layers:
            raise ValueError("FlipCounter: the model has no binary layer (module with is_binary = True).")
        self.optimizer = optimizer
        self.total_binary_params = sum(w.numel() for w in self.layers.values())
        self.layer_sizes = {name: w.numel() for name, w in self.layers.items()}
        self._names = list(self.layers)
        self._signs: dict[str, Tensor] = {}
        self._seen_steps: dict[str, int] = {}
        self.device = next(iter(self.layers.values())).device
        self._zero = torch.zeros((), dtype=torch.int64, device=self.device)
        self._last = torch.zeros(len(self._names), dtype=torch.int64, device=self.device)  # this step, per layer
        # which weights Bop reports on is decided once: the optimizer's parameters are fixed after construction
        self._bop_owned = {name: self._owned_by_bop(w) for name, w in self.layers.items()}
        self.reset_epoch()
        self.before_step()

    def _owned_by_bop(self, weight: Tensor) -> bool:
        if self.optimizer is None:
            return False
        children = getattr(self.optimizer, "optimizers", [self.optimizer])
        return any(
            isinstance(o, Bop) and any(p is weight for g in o.param_groups for p in g["params"]) for o in children
        )

    @torch.no_grad()
    def before_step(self) -> None:
        """Snapshot the signs of the weights that Bop does not report on."""
        for name, w in self.layers.items():
            if not self._bop_owned[name]:
                self._signs[name] = w < 0

    @torch.no_grad()
    def after_step(self) -> dict[str, Tensor]:
        """Flips of each binary layer at the step just taken; adds them to the epoch's counts."""
        counts: list[Tensor] = []
        for name, w in self.layers.items():
            if self._bop_owned[name]:
                # read without creating state: only Bop's own entries are looked at. The step count is a CPU
                # tensor, so reading it is no device sync.
                state = self.optimizer.state.get(w) or {}
                step = int(state["step"]) if "flips" in state else 0
                fresh = step != self._seen_steps.get(name, 0)
                self._seen_steps[name] = step
                counts.append(state["flips"] if fresh else self._zero)
            else:
                negative = w < 0
                counts.append(torch.count_nonzero(negative != self._signs[name]))
                self._signs[name] = negative
        # one stack (a copy: Bop's tensors may be reused) and one add per step, whatever the number of layers
        self._last = torch.stack([c.to(self.device) for c in counts])
        self._epoch = self._epoch + self._last
        self.epoch_steps += 1
        return self.last_flips

    @property
    def last_flips(self) -> dict[str, Tensor]:
        """Flips of each layer at the last step (0-dim int64 tensors on :attr:`device`)."""
        return dict(zip(self._names, self._last.unbind()))

    @property
    def last_total(self) -> Tensor:
        """Flips of the whole model at the last step (0-dim int64 tensor)."""
        return self._last.sum()

    @property
    def last_pi_t(self) -> Tensor:
        """Eq. (7)'s ``pi_t`` of the whole model at the last step (0-dim float64 tensor)."""
        return log_flip_ratio(self.last_total, self.total_binary_params)

    @property
    def epoch_flips(self) -> dict[str, Tensor]:
        """Flips of each layer since :meth:`reset_epoch`."""
        return dict(zip(self._names, self._epoch.unbind()))

    @epoch_flips.setter
    def epoch_flips(self, flips: dict[str, Tensor | int]) -> None:
        if set(flips) != set(self._names):
            raise KeyError(f"epoch_flips: expected the layers {self._names}, got {sorted(flips)}")
        self._epoch = torch.stack([torch.as_tensor(flips[n], dtype=torch.int64).to(self.device) for n in self._names])

    @property
    def epoch_total(self) -> Tensor:
        """Flips of the whole model since :meth:`reset_epoch` (0-dim int64 tensor)."""
        return self._epoch.sum()

    def layer_pi_t(self) -> dict[str, Tensor]:
        """``pi_t`` of each layer at the last step."""
        return {name: log_flip_ratio(f.cpu(), self.layer_sizes[name]) for name, f in self.last_flips.items()}

    def reset_epoch(self) -> None:
        """Start a new epoch's totals."""
        self._epoch = torch.zeros(len(self._names), dtype=torch.int64, device=self.device)
        self.epoch_steps = 0

    def epoch_flip_ratio(self) -> float:
        """Flips of the epoch so far per binary weight (may exceed 1 over many steps)."""
        return float(self.epoch_total) / self.total_binary_params

    def __repr__(self) -> str:
        return (
            f"FlipCounter({len(self.layers)} binary layers, {self.total_binary_params:,} weights, "
            f"{'Bop-reported' if self.optimizer is not None else 'sign-compared'} counts)"
        )
