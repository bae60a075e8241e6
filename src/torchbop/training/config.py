"""Training configuration: one frozen dataclass, filled from a YAML recipe and typed command-line overrides.

A recipe (``src/torchbop/recipes/<name>.yaml``) is a flat mapping of :class:`TrainConfig` fields. Unknown keys raise
``ValueError`` naming them, and every value is checked against its field's type (the spirit of nanoGPT's
``configurator.py``, without ``exec``). Overrides given as ``key=value`` strings are parsed as YAML scalars and then
typed the same way, so ``epochs=3`` is an int, ``gamma=1e-3`` a float and ``model_kwargs.width=0.25`` sets one entry of
the ``model_kwargs`` mapping.

Example:
    >>> cfg = TrainConfig(epochs=2)
    >>> cfg = apply_overrides(cfg, ["gamma=1e-3", "model_kwargs.width=0.5", "early_stop_flip_epochs=null"])
    >>> cfg.gamma, cfg.model_kwargs, cfg.early_stop_flip_epochs
    (0.001, {'width': 0.5}, None)
    >>> apply_overrides(cfg, ["epoch=3"])
    Traceback (most recent call last):
    ...
    ValueError: Unknown config key(s): epoch (did you mean 'epochs'?)
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import yaml

__all__ = ["TrainConfig", "load_recipe", "apply_overrides", "available_recipes", "recipe_path"]

MODES = ("bop", "latent")
DATASETS = ("mnist", "fashion-mnist", "cifar10")
PROTOCOLS = ("original", "reproduction")
OPTIMIZERS = {"bop": ("bop", "bop2nd", "cema"), "latent": ("adam", "sgd")}
PRECISIONS = ("auto", "32", "bf16-mixed")
TEST_WEIGHTS = ("last", "best")
DECAY_SCHEDULES = ("step", "linear", "interpolate")
RECALIBRATIONS = ("off", "end", "eval")
#: the rates decay_schedule "interpolate" moves, each to its ``<name>_end``
INTERPOLATED = ("gamma", "threshold", "sigma", "lr")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on. Defaults give a small MNIST BNN trained with Bop.

    ``None`` means "not used" or "the library's default", never a hidden switch.
    """

    # --- identity -----------------------------------------------------------------------------------------------
    name: str = "run"  # names the default output directory runs/<name>
    recipe_version: int = 1  # bumped whenever a recipe's numbers change

    # --- model --------------------------------------------------------------------------------------------------
    model: str = "mnist_bnn"  # a key of torchbop.models.MODELS
    model_kwargs: dict = field(default_factory=dict)  # e.g. {width: 0.25, variant: original}
    mode: str = "bop"  # "bop": weights are +-1 and Bop flips them; "latent": real latent weights, SGD/Adam, clipped

    # --- data ---------------------------------------------------------------------------------------------------
    dataset: str = "mnist"  # "mnist" | "fashion-mnist" | "cifar10"
    data_dir: str | None = None  # None: $TORCHBOP_DATA, then ~/.cache/torchbop (torchbop.data.resolve_data_dir)
    download: bool = False  # fetch missing files in prepare_data (rank 0 only)
    protocol: str = "original"  # "original": validate on test | "reproduction": seeded class-balanced hold-out
    val_fraction: float = 0.1  # hold-out fraction of the training set under the reproduction protocol
    subset: int | None = None  # train on this many (seeded, random) training images only
    augment: bool = False  # pad-4 random-crop + horizontal flip (CIFAR-10)
    batch_size: int = 100
    eval_batch_size: int = 1000  # validation/test batch size (no gradients, so larger is just faster)

    # --- optimization -------------------------------------------------------------------------------------------
    epochs: int = 5
    # mode bop: "bop" | "bop2nd" | "cema" (Quist et al., ICLR 2023); mode latent: "adam" | "sgd" (every parameter)
    optimizer: str = "bop"
    gamma: float = 1e-4  # Bop's adaptivity rate (kept in the param group as "lr"); CEMA: the rate of its m
    threshold: float = 1e-8  # Bop's flip threshold tau (not used by CEMA, which flips where w * I > 0)
    sigma: float = 1e-2  # Bop2ndOrder's second-moment rate
    unbiased: bool = False  # Bop2ndOrder: the authors' unbiased variant (m / gamma over sqrt(v / sigma))
    # CEMA's inertia rate, in (0, 1]; required by optimizer "cema" and used by it alone. Kept in the param group as
    # "lr", so decay_schedule "step"/"linear" decay alpha (the authors decay it linearly), not gamma.
    alpha: float | None = None
    gamma_decay: float = 1.0  # multiply gamma (latent mode: lr) by this every gamma_decay_every epochs
    gamma_decay_every: int | None = None  # epochs; None: constant
    # "step": the staircase above | "linear": multiply gamma (latent mode: lr) by 1 - epoch / epochs at each epoch,
    # down to 0 over the run (ReActNet's and AdamBNN's schedule, arXiv:2003.03488, arXiv:2009.13799) |
    # "interpolate": before every optimizer step, set each of gamma, threshold, sigma and lr that has an *_end below
    # to (start - end) * (1 - step / steps) + end, linear in value from its field's value at the first step to *_end
    # at the end of the run (the Bop2ndOrder authors' CIFAR-10 recipe: Keras' PolynomialDecay, power 1, per step;
    # torchbop.training.schedules). Rates without an *_end stay constant.
    decay_schedule: str = "step"
    gamma_end: float | None = None  # "interpolate": gamma at the end of the run (mode bop, optimizer bop or bop2nd)
    threshold_end: float | None = None  # "interpolate": tau at the end of the run (same)
    sigma_end: float | None = None  # "interpolate": sigma at the end of the run (optimizer bop2nd)
    lr_end: float | None = None  # "interpolate": Adam's (latent mode: the optimizer's) lr at the end of the run
    lr: float = 0.01  # Adam/SGD learning rate: the non-binary parameters (mode bop) or all of them (mode latent)
    # mode latent: the learning rate of the non-binary parameters (batch norm), a second param group; None: lr
    other_lr: float | None = None
    momentum: float = 0.0  # SGD only
    early_stop_flip_epochs: int | None = None  # stop after this many consecutive epochs without a single flip
    test_weights: str = "last"  # "last": weights at the end | "best": lowest validation loss (reproduction)
    # Batch norm's running statistics lag weights that still flip. "end": before the test, recompute every batch
    # norm's running mean and variance over the training set (no augmentation, dataset order, batches of batch_size,
    # cumulative average) with the weights tested | "eval": also before every validation | "off": keep the running
    # averages of training. Its cost is reported (torchbop.training.recalibration).
    recalibrate_bn: str = "off"

    # --- runtime ------------------------------------------------------------------------------------------------
    seed: int = 0
    # "auto": bf16-mixed where the device runs bf16 natively, else 32 (resolved when the run starts, see
    # torchbop.training.precision) | "32" | "bf16-mixed" (autocast; parameters and optimizer state stay fp32)
    precision: str = "32"
    accelerator: str = "auto"
    devices: Union[int, str] = 1
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp" for several devices
    limit_train_batches: Union[int, float, None] = None  # Lightning's option: batches (int) or fraction (float)
    limit_eval_batches: Union[int, float, None] = None  # same, for validation and test
    out: str | None = None  # None: runs/<name>
    log_every_n_steps: int = 50
    checkpoint_every_n_steps: int | None = None  # also write last.ckpt mid-epoch every N optimizer steps
    resume: str | None = None  # a checkpoint file, or a run directory (its checkpoints/last.ckpt)
    progress_bar: bool = True
    # the GPU path: torch.compile the training forward and loss, fused Bop/Adam on CUDA, inf/NaN gradients checked
    # every log_every_n_steps steps instead of every step (no host sync per step); see torchbop.training.module
    compile: bool = False

    def __post_init__(self) -> None:
        for key, value in dataclasses.asdict(self).items():
            _check_type(key, value, _field_types()[key])
        _check_choice("mode", self.mode, MODES)
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("protocol", self.protocol, PROTOCOLS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS[self.mode], f" for mode {self.mode!r}")
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("test_weights", self.test_weights, TEST_WEIGHTS)
        _check_choice("decay_schedule", self.decay_schedule, DECAY_SCHEDULES)
        _check_choice("recalibrate_bn", self.recalibrate_bn, RECALIBRATIONS)
        if self.decay_schedule != "step" and (self.gamma_decay_every is not None or self.gamma_decay != 1.0):
            what = "decays to 0" if self.decay_schedule == "linear" else "moves the rates to their *_end"
            raise ValueError(f"decay_schedule {self.decay_schedule!r} {what} over the run by itself; remove "
                             "gamma_decay and gamma_decay_every (they set the 'step' schedule)")
        self._check_optimizer_options()
        positive = ["batch_size", "eval_batch_size", "epochs", "log_every_n_steps", "num_nodes"]
        positive += [k for k in ("subset", "gamma_decay_every", "early_stop_flip_epochs", "checkpoint_every_n_steps")
                     if getattr(self, k) is not None]
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"Invalid {key} value: {getattr(self, key)} (expected a positive integer)")
        for key in ("gamma", "threshold", "sigma", "lr", "momentum", "other_lr", *(f"{k}_end" for k in INTERPOLATED)):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ValueError(f"Invalid {key} value: {getattr(self, key)} (expected >= 0)")
        _check_devices(self.devices)
        if not 0.0 < self.gamma_decay <= 1.0:
            raise ValueError(f"Invalid gamma_decay value: {self.gamma_decay} (expected a number in (0, 1])")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"Invalid val_fraction value: {self.val_fraction} (expected a number in (0, 1))")
        if self.other_lr is not None and self.mode != "latent":
            raise ValueError(f"other_lr applies to mode 'latent' only (in mode {self.mode!r}, lr is already the "
                             "non-binary parameters' learning rate); remove other_lr")
        if self.test_weights == "best" and self.protocol == "original":
            raise ValueError("test_weights='best' with protocol 'original' would pick the weights on the test set; "
                             "use protocol 'reproduction' (a held-out validation split) or test_weights='last'")

    def _check_optimizer_options(self) -> None:
        """The options that belong to one optimizer or one schedule: CEMA's alpha, Bop2ndOrder's unbiased, *_end."""
        if self.optimizer == "cema":
            if self.alpha is None:
                raise ValueError("optimizer 'cema' needs alpha, the rate of its inertia in (0, 1]: set alpha (the "
                                 "authors' CIFAR-10 runs use values around 1e-3 to 1e-2)")
            for key in ("alpha", "gamma"):
                if not 0.0 < getattr(self, key) <= 1.0:
                    raise ValueError(f"Invalid {key} value: {getattr(self, key)} (CEMA expects a number in (0, 1])")
        elif self.alpha is not None:
            raise ValueError(f"alpha is CEMA's inertia rate (optimizer 'cema'); optimizer {self.optimizer!r} does "
                             "not use it: remove alpha or set optimizer: cema")
        if self.unbiased and self.optimizer != "bop2nd":
            raise ValueError(f"unbiased=True selects Bop2ndOrder's unbiased variant (optimizer 'bop2nd'); optimizer "
                             f"{self.optimizer!r} has none: remove unbiased or set optimizer: bop2nd")
        ends = [f"{k}_end" for k in INTERPOLATED if getattr(self, f"{k}_end") is not None]
        if self.decay_schedule != "interpolate":
            if ends:
                raise ValueError(f"{', '.join(ends)} set(s) where a rate ends under decay_schedule 'interpolate' "
                                 f"(here {self.decay_schedule!r}): set decay_schedule: interpolate or remove it")
            return
        if not ends:
            raise ValueError("decay_schedule 'interpolate' moves the rates that have an end value, and none has: set "
                             "one or more of gamma_end, threshold_end, sigma_end, lr_end")
        allowed = {"lr_end"}
        if self.mode == "bop" and self.optimizer in ("bop", "bop2nd"):
            allowed |= {"gamma_end", "threshold_end"}
        if self.optimizer == "bop2nd":
            allowed.add("sigma_end")
        if self.optimizer == "cema":
            allowed = set()
        for key in ends:
            if key not in allowed:
                raise ValueError(f"{key} is not a rate of optimizer {self.optimizer!r} in mode {self.mode!r} "
                                 f"(interpolated there: {', '.join(sorted(allowed)) or 'none'}); remove {key}"
                                 + ("; CEMA's alpha follows decay_schedule 'step' or 'linear'"
                                    if self.optimizer == "cema" else ""))
        if self.gamma_end is not None and self.gamma_end > 1.0:
            raise ValueError(f"Invalid gamma_end value: {self.gamma_end} (expected a number in [0, 1])")
        if self.sigma_end is not None and self.sigma_end > 1.0:
            raise ValueError(f"Invalid sigma_end value: {self.sigma_end} (expected a number in [0, 1])")
        if self.lr_end is not None and self.other_lr is not None:
            raise ValueError("lr_end with other_lr: 'interpolate' moves one lr; remove other_lr (or lr_end)")

    @property
    def out_dir(self) -> Path:
        """Where checkpoints, logs and the summary go."""
        return Path(self.out if self.out is not None else f"runs/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of every field (``TrainConfig(**cfg.to_dict()) == cfg``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a mapping, raising ``ValueError`` on unknown keys and coercing YAML's strings such as ``1e-4``."""
        _check_unknown(values)
        types_ = _field_types()
        return cls(**{k: _coerce(k, v, types_[k]) for k, v in values.items()})

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (typed like :meth:`from_dict`)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


# ----------------------------------------------------------------------------------------------------------------
# recipes and overrides
# ----------------------------------------------------------------------------------------------------------------
def available_recipes() -> list[str]:
    """Names of the recipes shipped with torchbop."""
    folder = resources.files("torchbop") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """A shipped recipe's file (``"mnist"``), or ``name_or_path`` itself when it is an existing file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"Recipe file not found: {path} (shipped recipes: "
                                    f"{', '.join(available_recipes())})")
        return path
    shipped = resources.files("torchbop") / "recipes" / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ValueError(f"Unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(available_recipes())} "
                         "(or give the path of a .yaml file)")
    return Path(str(shipped))


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Load a recipe by name (``"mnist"``, ``"cifar10"``) or path, then apply ``key=value`` overrides.

    A recipe without a ``name`` is named after its file.
    """
    path = recipe_path(name_or_path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"Recipe {path} is not valid YAML: {problem}{where}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"Recipe {path} cannot be read: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"Recipe {path} must be a mapping of TrainConfig fields, got {type(values).__name__}")
    values.setdefault("name", path.stem)
    try:
        config = TrainConfig.from_dict(values)
    except ValueError as error:
        raise ValueError(f"Recipe {path}: {error}") from None
    return apply_overrides(config, overrides or [])


def apply_overrides(config: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply ``key=value`` strings; ``model_kwargs.<k>=v`` sets one model argument. Values are YAML scalars."""
    changes: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"Invalid override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ValueError(f"Invalid override {item!r}: {text!r} is not a YAML value (quote it)") from None
        if "." in key:
            head, _, sub = key.partition(".")
            if head != "model_kwargs":
                _check_unknown({key: None})
                raise ValueError(f"Invalid override {item!r}: only model_kwargs.<name>=value takes a dotted key")
            kwargs = dict(changes.get("model_kwargs", config.model_kwargs))
            kwargs[sub] = value
            changes["model_kwargs"] = kwargs
        else:
            _check_unknown({key: None})
            changes[key] = value
    return config.replace(**changes) if changes else config


# ----------------------------------------------------------------------------------------------------------------
# typing helpers
# ----------------------------------------------------------------------------------------------------------------
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_unknown(values: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"{key} (did you mean {close[0]!r}?)" if close else key)
        raise ValueError(f"Unknown config key(s): {', '.join(hints)}")


def _check_choice(key: str, value: str, choices: tuple[str, ...], where: str = "") -> None:
    if value not in choices:
        raise ValueError(f"Invalid {key} value: {value!r}{where} (expected one of {', '.join(map(repr, choices))})")


def _check_devices(devices: int | str) -> None:
    """Lightning's forms: a positive count, -1 or "auto" (all), or a comma-separated list of device indices."""
    if isinstance(devices, int):
        ok = devices > 0 or devices == -1
    else:
        text = devices.strip()
        ok = text in ("auto", "-1") or (text.isdigit() and int(text) > 0) or (
            "," in text and all(part.strip().isdigit() for part in text.split(",") if part.strip()))
    if not ok:
        raise ValueError(f"Invalid devices value: {devices!r} (expected a positive number of devices, -1 or 'auto' "
                         "for all, or a comma-separated list of device indices such as '0,1')")


def _union_args(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Turn a YAML value into the field's type where that is lossless (``"1e-4"`` -> 1e-4, ``3`` -> 3.0, ``"2"`` -> 2
    for ``int | str``); anything else is left for ``_check_type`` to accept or reject."""
    options = _union_args(tp)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, str):
        for option in (int, float):
            if option in options:
                try:
                    return option(value)
                except ValueError:
                    pass
    if number and float in options and int not in options:
        return float(value)
    if number and str in options and int not in options and float not in options:
        return str(value)  # precision: 32 -> "32"
    return value


def _check_type(key: str, value: Any, tp: Any) -> None:
    options = _union_args(tp)
    for option in options:
        if option is type(None) and value is None:
            return
        if isinstance(option, type) and isinstance(value, option):
            if option in (int, float) and isinstance(value, bool):
                continue
            return
    names = " | ".join("None" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ValueError(f"Invalid {key} value: {value!r} (expected {names}, got {type(value).__name__})")
