r"""Turn a real-valued network into a binarized one, layer by layer: :func:`binarize`.

In the spirit of ``torch.ao.quantization``'s ``prepare``/``convert``: the model is written with ordinary ``nn.Conv1d``,
``nn.Conv2d`` and ``nn.Linear`` layers (and may be trained as a real network first); :func:`binarize` swaps the
chosen layers for :class:`~torchbop.nn.BinaryConv1d`, :class:`~torchbop.nn.BinaryConv2d` and
:class:`~torchbop.nn.BinaryLinear` with the same geometry, whose weights start at the signs of the real ones.

Each converted layer computes

.. math::
    y_c = \alpha_c \, \big(\operatorname{sign}(W) \star q_x(x)\big)_c + b_c,
    \qquad \operatorname{sign}(0) = +1,

with :math:`W` and :math:`b` the source layer's weight and bias, :math:`q_x` the input quantizer (default
:class:`~torchbop.quantizers.SteSign`, the straight-through sign of Courbariaux et al., arXiv:1602.02830) and
:math:`\alpha_c = 1` unless a weight scale is asked for (XNOR-Net, arXiv:1603.05279: :math:`\alpha_c` = mean of
:math:`|W_c|` over output channel :math:`c` of the *source* weights).
"""

from __future__ import annotations

import copy
import fnmatch
import logging
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from torchbop.nn.layers import _DEFAULT, MODES, SCALES, BinaryConv1d, BinaryConv2d, BinaryLinear
from torchbop.nn.params import _is_binary_layer
from torchbop.quantizers import SteSign, sign

__all__ = ["binarize", "CONVERTIBLE", "RULE_SETTINGS"]

logger = logging.getLogger(__name__)

#: The layer types :func:`binarize` converts (exact types: a subclass may change the forward) and what they become.
CONVERTIBLE: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: BinaryConv1d,
    nn.Conv2d: BinaryConv2d,
    nn.Linear: BinaryLinear,
}
#: Weight layers it recognises but cannot convert: a selector that reaches one of them is an error.
_UNSUPPORTED = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
    nn.Bilinear,
)
#: The keys a rule's settings may hold (each defaults to the keyword argument of the same name).
RULE_SETTINGS = ("mode", "input_quantizer", "scale", "pad_value")


def _kind(module: nn.Module) -> str | None:
    """``"binary"``, ``"convertible"``, ``"unsupported"`` or ``None`` (not a weight layer)."""
    if _is_binary_layer(module):
        return "binary"
    if type(module) in CONVERTIBLE:
        return "convertible"
    if isinstance(module, _UNSUPPORTED):
        return "unsupported"
    return None


class _Selector:
    """One selector: an exact qualified name, a glob (``fnmatch``), a compiled regex (full match) or a type."""

    def __init__(self, value: Any, where: str) -> None:
        self.value = value
        if isinstance(value, str):
            self.kind = "glob" if any(c in value for c in "*?[") else "name"
        elif isinstance(value, re.Pattern):
            self.kind = "regex"
        elif isinstance(value, type) and issubclass(value, nn.Module):
            self.kind = "type"
        else:
            raise TypeError(
                f"binarize: {where} must be a layer name or glob (str), a compiled regex (re.compile(...)) or an "
                f"nn.Module subclass, got {type(value).__name__} ({value!r})"
            )

    def matches(self, name: str, module: nn.Module) -> bool:
        if self.kind == "name":
            return name == self.value
        if self.kind == "glob":
            return fnmatch.fnmatchcase(name, self.value)
        if self.kind == "regex":
            return self.value.fullmatch(name) is not None
        return isinstance(module, self.value)

    def __repr__(self) -> str:
        if self.kind == "regex":
            return f"re.compile({self.value.pattern!r})"
        return self.value.__name__ if self.kind == "type" else repr(self.value)


def _check_settings(settings: Any, where: str) -> dict[str, Any]:
    if not isinstance(settings, Mapping):
        raise TypeError(f"binarize: {where} must be a dict of settings, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(RULE_SETTINGS))
    if unknown:
        raise ValueError(f"binarize: unknown setting(s) {unknown} in {where} (expected keys among {RULE_SETTINGS})")
    if "mode" in settings and settings["mode"] not in MODES:
        raise ValueError(f"binarize: invalid mode {settings['mode']!r} in {where} (expected one of {MODES})")
    if "scale" in settings and settings["scale"] is not None and settings["scale"] not in SCALES:
        raise ValueError(f"binarize: invalid scale {settings['scale']!r} in {where} (expected None or one of {SCALES})")
    if "pad_value" in settings and (
        not isinstance(settings["pad_value"], numbers.Real) or isinstance(settings["pad_value"], bool)
    ):
        raise TypeError(f"binarize: pad_value in {where} must be a number, got {settings['pad_value']!r}")
    q = settings.get("input_quantizer")
    if q is not None and q is not _DEFAULT and not isinstance(q, nn.Module) and not callable(q):
        raise TypeError(
            f"binarize: input_quantizer in {where} must be an nn.Module, a callable returning one (such as the class "
            f"torchbop.quantizers.SteSign) or None, got {type(q).__name__}"
        )
    return dict(settings)


def _parse_rules(rules: Any) -> list[tuple[_Selector, dict[str, Any]]]:
    if rules is None:
        return []
    if isinstance(rules, Mapping):
        pairs = list(rules.items())
    elif isinstance(rules, Sequence) and not isinstance(rules, str):
        pairs = list(rules)
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise TypeError(f"binarize: rules[{i}] must be a (selector, settings) pair, got {pair!r}")
    else:
        raise TypeError(
            f"binarize: rules must be a dict {{selector: settings}} or a list of (selector, settings) "
            f"pairs, got {type(rules).__name__}"
        )
    return [
        (_Selector(sel, f"the selector of rules[{i}]"), _check_settings(s, f"rules[{i}] ({sel!r})"))
        for i, (sel, s) in enumerate(pairs)
    ]


def _data_order(model: nn.Module, layers: list[tuple[str, nn.Module]], example_input: Any) -> list[str]:
    """The names of ``layers`` in the order one forward pass of ``example_input`` calls them (eval mode, no grad)."""
    calls: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _a, name=name: calls.append(name)) for name, m in layers]
    training = {m: m.training for m in model.modules()}
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    try:
        model.eval()  # batch norm keeps its running statistics, dropout is off
        with torch.no_grad():
            model(*args)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training.items():
            module.training = mode
    if not calls:
        raise ValueError("binarize: the forward pass of example_input called none of the model's weight layers")
    return calls


def _pads(conv: nn.Module) -> bool:
    """Whether a convolution pads its input (so that a ``pad_value`` has an effect)."""
    if conv.padding_mode != "zeros" or conv.padding == "valid":
        return False
    if conv.padding == "same":
        return any(d * (k - 1) > 0 for d, k in zip(conv.dilation, conv.kernel_size))
    return any(p > 0 for p in conv.padding)


def _make_quantizer(q: Any) -> nn.Module | None:
    if q is _DEFAULT:
        return SteSign()
    if q is None:
        return None
    if isinstance(q, nn.Module):
        return copy.deepcopy(q)  # one instance per layer: a learnable quantizer must not be shared
    made = q()
    if not isinstance(made, nn.Module):
        raise TypeError(f"binarize: input_quantizer() returned {type(made).__name__}, not an nn.Module")
    return made


@torch.no_grad()
def _convert(name: str, old: nn.Module, settings: dict[str, Any]) -> nn.Module:
    cls = CONVERTIBLE[type(old)]
    common = dict(
        device=old.weight.device,
        dtype=old.weight.dtype,
        mode=settings["mode"],
        input_quantizer=_make_quantizer(settings["input_quantizer"]),
        scale=settings["scale"],
    )
    try:
        if cls is BinaryLinear:
            new = BinaryLinear(old.in_features, old.out_features, old.bias is not None, **common)
        else:
            pad_value = float(settings["pad_value"]) if _pads(old) else 0.0
            new = cls(
                old.in_channels,
                old.out_channels,
                old.kernel_size,
                old.stride,
                old.padding,
                old.dilation,
                old.groups,
                old.bias is not None,
                old.padding_mode,
                pad_value=pad_value,
                **common,
            )
    except ValueError as error:
        raise ValueError(f"binarize: cannot convert {name!r} ({type(old).__name__}): {error}") from None
    new.weight.copy_(sign(old.weight) if settings["mode"] == "bop" else old.weight)
    new.weight.requires_grad_(old.weight.requires_grad)
    if old.bias is not None:
        new.bias.copy_(old.bias)
        new.bias.requires_grad_(old.bias.requires_grad)
    if settings["scale"] in ("fixed", "learnable"):
        new.weight_scale.copy_(old.weight.abs().mean(dim=tuple(range(1, old.weight.dim()))))
    return new.train(old.training)


def _table(rows: list[tuple[str, ...]], kept: list[tuple[str, str]]) -> str:
    header = ("name", "from", "to", "weight shape", "binary params", "mode", "scale", "input quantizer")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    total = sum(int(r[4].replace(",", "")) for r in rows)
    lines.insert(0, f"binarize: {len(rows)} layer(s) converted, {total:,} binary parameters; {len(kept)} kept real")
    lines += [f"kept real: {name} ({why})" for name, why in kept]
    return "\n".join(lines)


def binarize(
    model: nn.Module,
    layers: Any = None,
    *,
    rules: Any = None,
    example_input: Any = None,
    keep_first: bool = True,
    keep_last: bool = True,
    mode: str = "bop",
    input_quantizer: Any = _DEFAULT,
    scale: str | None = None,
    pad_value: float = 0.0,
    inplace: bool = False,
    verbose: bool | Callable[[str], Any] = False,
) -> nn.Module:
    r"""Replace the ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Linear`` layers of ``model`` by binary layers.

    Each converted layer keeps its geometry (channels, kernel, stride, padding including ``"same"``, dilation, groups,
    padding mode, device, dtype) and its bias (copied); its weight becomes :math:`\operatorname{sign}(W)` of the
    source weight (:math:`\operatorname{sign}(0) = +1`) in ``mode="bop"``, so a trained real network is a starting
    point, or the real weight itself in ``mode="latent"`` (copied as is, **not clipped**: call
    :func:`torchbop.nn.clip_latent_weights_` after conversion and after each step to clip to [-1, 1]). Its input
    is binarized by ``input_quantizer``. Forward hooks and parametrizations of a replaced layer are not carried over.

    **First and last layer.** By default both stay real (``keep_first=True``, ``keep_last=True``), as in XNOR-Net
    (arXiv:1603.05279), Bi-Real Net (arXiv:1808.00278) and Larq Zoo: the first layer sees real pixels with few
    input channels, where binarizing the input destroys most of the information for few saved operations, and the
    last layer makes the logits, whose resolution a +-1 weight matrix limits; together they are a small share of the
    operations. The first and last layer are the first and last *weight layer* (a convolution or linear layer of any
    kind, binary ones included) that the data meets: in the order in which one forward pass of ``example_input``
    calls them (forward pre-hooks, the model in eval mode under ``torch.no_grad()``, so batch-norm statistics do not
    change) when ``example_input`` is given, else in module order (``model.named_modules()``, the order of
    registration), which differs from the data order when ``__init__`` defines the layers in another order than
    ``forward`` uses them.

    **Which layers** (``layers``): ``None`` (default) converts every ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear``
    (exact types; a subclass may change the forward and is left alone); otherwise a selector or a list of them, and
    a layer is converted when any selector matches it. A selector is

    - a ``str``: the exact qualified name of a layer (``"layer1.0.conv1"``), or, when it holds ``*``, ``?`` or ``[``,
      a glob matched against qualified names with ``fnmatch.fnmatchcase`` (``"layer*.conv*"``);
    - a compiled regex, ``re.compile(r"layer[12]\..*")``, which must match the whole name;
    - a type, ``nn.Conv2d``: every layer that is an instance of it.

    ``keep_first``/``keep_last`` then leave the first and last layer out of the selection (naming one of them
    exactly is an error that says to pass ``keep_first=False`` / ``keep_last=False``).

    **Per-layer settings** (``rules``): a dict ``{selector: settings}`` or a list of ``(selector, settings)`` pairs,
    settings being a dict with keys among ``RULE_SETTINGS`` (``mode``, ``input_quantizer``, ``scale``,
    ``pad_value``). Every converted layer starts from the keyword arguments; each rule, in order, overrides the given
    keys for the converted layers it matches, so later rules override earlier ones. Rules configure, they do not
    select.

    **Errors** (each a ``ValueError``, raised before the model changes): a selector (of ``layers`` or ``rules``) that
    matches no weight layer; an exact name that is not a weight layer; a ``layers`` selector that reaches a layer
    ``binarize`` cannot convert (``nn.Conv3d``, ``nn.ConvTranspose2d``, ``nn.Bilinear``, a subclass of a
    convertible type: with ``layers=None`` these are skipped and reported as kept real); an exact name of a layer that
    is already binary; nothing left to convert. ``binarize`` never touches a binary layer, so applying it to a model
    it already converted converts nothing and raises that last error (a second call with other selections, e.g.
    ``keep_first=False``, converts what the first left real). Arguments of the wrong type are ``TypeError`` naming the
    argument.

    Args:
        model: the network (unchanged unless ``inplace=True``).
        layers: which layers to convert (see above).
        rules: per-layer settings (see above).
        example_input: a tensor (or a tuple of positional arguments) for one forward pass that decides the data
            order of the layers; ``None``: module order.
        keep_first: keep the first weight layer real.
        keep_last: keep the last weight layer real.
        mode: ``"bop"`` (weights +-1, trained by Bop) or ``"latent"`` (real latent weights, binarized in forward).
        input_quantizer: the quantizer of each converted layer's input: an ``nn.Module`` (copied into every layer),
            a callable returning one (``SteSign``, ``lambda: SteSign(clip_value=1.3)``), or ``None`` (real input);
            default a fresh :class:`~torchbop.quantizers.SteSign` per layer.
        scale: ``None``, ``"mean_abs"`` (latent mode only), ``"fixed"`` or ``"learnable"`` (see
            :mod:`torchbop.nn.layers`); ``"fixed"`` and ``"learnable"`` start at the source weights' per-output-channel
            mean :math:`|W|`, so with ``mode="bop"`` the converted layer computes :math:`\alpha \odot
            (\operatorname{sign}(W) \star x)`, XNOR-Net's approximation of the real layer on binary input.
        pad_value: the value convolutions pad their binarized input with (``-1.0`` or ``1.0`` keep borders binary);
            applied to the convolutions that pad with zeros, ignored for the others and for linear layers.
        inplace: convert ``model`` itself instead of a deep copy.
        verbose: ``True`` prints the table of what was converted (name, source type, binary type, weight shape,
            binary parameters, mode, scale, input quantizer) and what was kept real and why; a callable (``print``,
            ``logger.info``, ``list.append``) receives that table as one string instead.

    Returns:
        The converted model: a deep copy of ``model``, or ``model`` itself with ``inplace=True`` (when ``model`` is
        itself a convertible layer, the new binary layer).

    Example:
        >>> import re
        >>> model = nn.Sequential(
        ...     nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        ...     nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
        ...     nn.Flatten(), nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 10),
        ... )
        >>> bnn = binarize(model, rules={"6": {"scale": "fixed"}}, verbose=True)
        binarize: 2 layer(s) converted, 2,624 binary parameters; 2 kept real
        name  from    to            weight shape  binary params  mode  scale  input quantizer
        3     Conv2d  BinaryConv2d  (8, 8, 3, 3)  576            bop   -      SteSign
        6     Linear  BinaryLinear  (16, 128)     2,048          bop   fixed  SteSign
        kept real: 0 (Conv2d: the first layer, keep_first=True)
        kept real: 7 (Linear: the last layer, keep_last=True)
        >>> bnn[3].weight.detach().abs().unique(), type(model[3]).__name__  # the source model is unchanged
        (tensor([1.]), 'Conv2d')
        >>> torch.equal(bnn[6].weight_scale, model[6].weight.detach().abs().mean(dim=1))
        True
        >>> binarize(bnn)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: binarize: nothing to convert in Sequential: 2 layer(s) already binary (binarize converts a ...
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"binarize: model must be an nn.Module, got {type(model).__name__}")
    for arg, value in (("keep_first", keep_first), ("keep_last", keep_last), ("inplace", inplace)):
        if not isinstance(value, bool):
            raise TypeError(f"binarize: {arg} must be a bool, got {type(value).__name__} ({value!r})")
    if not (isinstance(verbose, bool) or callable(verbose)):
        raise TypeError(f"binarize: verbose must be a bool or a callable taking a string, got {type(verbose).__name__}")
    if example_input is not None and not isinstance(example_input, (Tensor, tuple, list)):
        raise TypeError(
            f"binarize: example_input must be a Tensor or a tuple of positional arguments, got "
            f"{type(example_input).__name__}"
        )
    defaults = _check_settings(
        dict(mode=mode, input_quantizer=input_quantizer, scale=scale, pad_value=pad_value), "the keyword arguments"
    )
    if layers is None:
        selectors = None
    else:
        values = list(layers) if isinstance(layers, (list, tuple)) else [layers]
        if not values:
            raise ValueError("binarize: layers is empty; pass None to convert every Conv1d/Conv2d/Linear layer")
        selectors = [
            _Selector(v, f"layers[{i}]" if isinstance(layers, (list, tuple)) else "layers")
            for i, v in enumerate(values)
        ]
    parsed_rules = _parse_rules(rules)

    if not inplace:
        model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    weight_layers = [(name, m) for name, m in modules.items() if _kind(m)]
    kinds = {name: _kind(m) for name, m in weight_layers}
    what = type(model).__name__
    if not weight_layers:
        raise ValueError(f"binarize: {what} has no Conv1d, Conv2d or Linear layer to convert")
    order = _data_order(model, weight_layers, example_input) if example_input is not None else list(kinds)
    ends = {"first": (order[0], keep_first), "last": (order[-1], keep_last)}
    kept_ends = {name: end for end, (name, keep) in ends.items() if keep}

    def hits(selector: _Selector, where: str) -> list[str]:
        found = [name for name, m in weight_layers if selector.matches(name, m)]
        if selector.kind == "name" and selector.value in modules and not found:
            raise ValueError(
                f"binarize: {where} {selector!r} is a {type(modules[selector.value]).__name__}, not a "
                f"Conv1d, Conv2d or Linear layer"
            )
        if not found:
            names = ", ".join(repr(n) for n in kinds if kinds[n] == "convertible") or "none"
            raise ValueError(f"binarize: {where} {selector!r} matches no layer of {what} (convertible layers: {names})")
        return found

    kept: dict[str, str] = {}
    if selectors is None:
        selected = [name for name in kinds if kinds[name] == "convertible"]
        for name in kinds:
            if kinds[name] == "unsupported":
                kept[name] = f"{type(modules[name]).__name__}: a type binarize does not convert"
    else:
        chosen: set[str] = set()
        for sel in selectors:
            found = hits(sel, "layers selector")
            for name in found:
                kind, typename = kinds[name], type(modules[name]).__name__
                if kind == "unsupported":
                    raise ValueError(
                        f"binarize: layers selector {sel!r} reaches {name!r}, a {typename}, which binarize cannot "
                        f"convert (it converts exactly {', '.join(t.__name__ for t in CONVERTIBLE)}); narrow the "
                        "selector"
                    )
                if kind == "binary" and sel.kind == "name":
                    raise ValueError(f"binarize: {name!r} is already a binary layer ({typename}); nothing to convert")
                if sel.kind == "name" and name in kept_ends:
                    end = kept_ends[name]
                    raise ValueError(
                        f"binarize: {name!r} is the {end} layer, which keep_{end}=True keeps real; pass "
                        f"keep_{end}=False to convert it"
                    )
            if all(kinds[n] == "binary" for n in found):
                raise ValueError(
                    f"binarize: layers selector {sel!r} matches only binary layers ({found}); they are "
                    "converted already"
                )
            chosen.update(n for n in found if kinds[n] == "convertible")
        selected = [name for name in kinds if name in chosen]
    for name, end in kept_ends.items():
        if name in selected:
            selected.remove(name)
            kept[name] = f"{type(modules[name]).__name__}: the {end} layer, keep_{end}=True"
    if not selected:
        n_binary = sum(kind == "binary" for kind in kinds.values())
        reasons = [f"{n_binary} layer(s) already binary (binarize converts a layer once)"] if n_binary else []
        real_ends = [n for n in kept_ends if kinds[n] == "convertible"]
        if real_ends:
            reasons.append(
                f"{len(real_ends)} kept real as first/last layer ({', '.join(map(repr, real_ends))}: "
                "keep_first=False / keep_last=False convert them)"
            )
        raise ValueError(f"binarize: nothing to convert in {what}: {', '.join(reasons) or 'no layer selected'}")

    settings = {name: dict(defaults) for name in selected}
    for i, (sel, overrides) in enumerate(parsed_rules):
        for name in hits(sel, f"rules[{i}] selector"):
            if name in settings:
                settings[name].update(overrides)
    new_layers = {name: _convert(name, modules[name], settings[name]) for name in selected}  # may raise: no change yet

    by_id = {id(modules[name]): new for name, new in new_layers.items()}
    every_name = [(name, m) for name, m in model.named_modules(remove_duplicate=False) if name and id(m) in by_id]
    for name, m in every_name:  # a layer registered under several names is replaced under each of them
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, by_id[id(m)])
    if "" in new_layers:
        model = new_layers[""]

    rows = []
    for name, new in new_layers.items():
        q = new.input_quantizer
        rows.append(
            (
                name or "(model)",
                type(modules[name]).__name__,
                type(new).__name__,
                str(tuple(new.weight.shape)),
                f"{new.weight.numel():,}",
                new.mode,
                new.scale or "-",
                type(q).__name__ if q else "None",
            )
        )
    table = _table(
        rows,
        [
            (n or "(model)", why)
            for n, why in sorted(kept.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        ],
    )
    logger.info(table)
    if verbose is True:
        print(table)
    elif callable(verbose):
        verbose(table)
    return model
