"""Training configuration: one frozen dataclass whose every field declares its domain, filled from a YAML recipe and
``key=value`` overrides.

A recipe (``src/torchbop/recipes/<name>.yaml``) is a flat mapping of :class:`TrainConfig` fields; ``--set key=value``
overrides are read the same way (YAML scalars, :func:`torchbop.domains.parse_assignments`, shared with ``torchbop
experiment --set``), so ``epochs=3`` is an int, ``gamma=1e-3`` a float and ``model_kwargs.width=0.25`` sets one entry
of the ``model_kwargs`` mapping. Unknown keys raise ``ValueError`` with the closest field (the spirit of nanoGPT's
``configurator.py``, without ``exec``).

Every field is declared with its :class:`~torchbop.domains.Domain` (type, range or choices) beside it, and every
value is checked in one place, ``__post_init__``: the domains, then the rules between fields (``_check_rules``:
an optimizer of the mode, options of one optimizer, batch size within the dataset, ...). So a value that torch, numpy
or Lightning would refuse with a traceback (``seed=-1``, ``devices='0,'`` on CPU, ``limit_train_batches=1.5``) or
silently replace (``limit_train_batches=0``, ``subset`` above the training set, SGD's ``momentum`` under Bop) stops
here with one line naming the key, the value and the fix. What depends on the machine and its files (folders, the
checkpoint to resume, the accelerator, the model's arguments) is :func:`check_environment`, run by the CLI before a
run folder exists.

Example:
    >>> cfg = TrainConfig(epochs=2)
    >>> cfg = apply_overrides(cfg, ["gamma=1e-3", "model_kwargs.width=0.5", "early_stop_flip_epochs=null"])
    >>> cfg.gamma, cfg.model_kwargs, cfg.early_stop_flip_epochs
    (0.001, {'width': 0.5}, None)
    >>> apply_overrides(cfg, ["epoch=3"])
    Traceback (most recent call last):
    ...
    ValueError: TrainConfig has no setting 'epoch' (did you mean 'epochs'?)
    >>> apply_overrides(cfg, ["seed=-1"])
    Traceback (most recent call last):
    ...
    ValueError: Invalid seed value: -1 (expected an integer in [0, 4294967295])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

import torch
import yaml

from torchbop.data.datasets import DATASETS
from torchbop.domains import (
    AnyOf,
    Bool,
    Choice,
    Domain,
    Folder,
    Int,
    KeyOf,
    Mapping,
    Real,
    Text,
    check_known,
    parse_assignments,
)
from torchbop.models import MODELS, create_model

__all__ = [
    "TrainConfig",
    "load_recipe",
    "apply_overrides",
    "available_recipes",
    "recipe_path",
    "field_domains",
    "check_environment",
    "setting",
]

MODES = ("bop", "latent")
PROTOCOLS = ("original", "reproduction")
OPTIMIZERS = {"bop": ("bop", "bop2nd", "cema"), "latent": ("adam", "sgd")}
PRECISIONS = ("auto", "32", "bf16-mixed")
TEST_WEIGHTS = ("last", "best")
DECAY_SCHEDULES = ("step", "linear", "interpolate")
RECALIBRATIONS = ("off", "end", "eval")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
STRATEGIES = ("auto", "ddp", "ddp_spawn")  # what torchbop runs and tests (tests/training/test_ddp.py)
#: the rates decay_schedule "interpolate" moves, each to its ``<name>_end``
INTERPOLATED = ("gamma", "threshold", "sigma", "lr")
_FP16 = "fp16 needs loss scaling, which torchbop does not do: use bf16-mixed"


def setting(default: Any, domain: Domain) -> Any:
    """A dataclass field with its :class:`~torchbop.domains.Domain` (``default=dict`` makes a fresh dict each time)."""
    if default is dict:
        return field(default_factory=dict, metadata={"domain": domain})
    return field(default=default, metadata={"domain": domain})


_RATE = Real(0, 1, low_open=True)  # Bop's gamma, Bop2ndOrder's sigma, CEMA's alpha (torchbop.optim validates them)
_DEVICES = AnyOf(
    (Int(1), Choice((-1, "auto")), Text(forbid=r"^(?!\s*\d+\s*(,\s*\d+\s*)*,?\s*$)", numbers=False)),
    rule="a positive number of devices, -1 or 'auto' for all, or a comma-separated list of device "
    "indices such as '0,1'",
    examples=("0", "-2", "cpu", "1.5", "'0,a'"),
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on. Defaults give a small MNIST BNN trained with Bop.

    ``None`` means "not used" or "the library's default", never a hidden switch. Each field declares its domain
    (``setting(default, domain)``); the rules between fields are :meth:`_check_rules`.
    """

    # --- identity -----------------------------------------------------------------------------------------------
    # names the default output directory runs/<name>
    name: str = setting(
        "run",
        Text(forbid=r"[/\\]|^\.\.?$", rule="a folder name (no '/' or '\\', not '.' or '..')", examples=("a/b", "..")),
    )
    recipe_version: int = setting(1, Int(1))  # bumped whenever a recipe's numbers change

    # --- model --------------------------------------------------------------------------------------------------
    model: str = setting("mnist_bnn", KeyOf(registry=MODELS))  # a key of torchbop.models.MODELS (registered then)
    # e.g. {width: 0.25, variant: original}; what the model accepts is checked by check_environment (a meta build)
    model_kwargs: dict = setting(dict, Mapping())
    # "bop": weights are +-1 and Bop flips them; "latent": real latent weights, SGD/Adam, clipped
    mode: str = setting("bop", Choice(MODES))

    # --- data ---------------------------------------------------------------------------------------------------
    dataset: str = setting("mnist", Choice(tuple(DATASETS)))  # a row of torchbop.data.DATASETS
    # None: $TORCHBOP_DATA, then ~/.cache/torchbop (torchbop.data.resolve_data_dir)
    data_dir: str | None = setting(None, Folder(none=True))
    download: bool = setting(False, Bool())  # fetch missing files before training (rank 0 only)
    # "original": validate on test | "reproduction": seeded class-balanced hold-out
    protocol: str = setting("original", Choice(PROTOCOLS))
    # hold-out fraction of the training set under the reproduction protocol
    val_fraction: float = setting(0.1, Real(0, 1, low_open=True, high_open=True))
    subset: int | None = setting(None, Int(1, none=True))  # train on this many (seeded, random) training images only
    augment: bool = setting(False, Bool())  # pad-4 random-crop + horizontal flip (CIFAR-10)
    batch_size: int = setting(100, Int(1))
    # validation/test batch size (no gradients, so larger is just faster)
    eval_batch_size: int = setting(1000, Int(1))

    # --- optimization -------------------------------------------------------------------------------------------
    epochs: int = setting(5, Int(1))
    # mode bop: "bop" | "bop2nd" | "cema" (Quist et al., ICLR 2023); mode latent: "adam" | "sgd" (every parameter)
    optimizer: str = setting("bop", Choice(tuple(o for names in OPTIMIZERS.values() for o in names)))
    # Bop's adaptivity rate (kept in the param group as "lr"); CEMA: the rate of its m
    gamma: float = setting(1e-4, _RATE)
    # Bop's flip threshold tau (not used by CEMA, which flips where w * I > 0)
    threshold: float = setting(1e-8, Real(0))
    sigma: float = setting(1e-2, _RATE)  # Bop2ndOrder's second-moment rate
    # Bop2ndOrder: the authors' unbiased variant (m / gamma over sqrt(v / sigma))
    unbiased: bool = setting(False, Bool())
    # CEMA's inertia rate, in (0, 1]; required by optimizer "cema" and used by it alone. Kept in the param group as
    # "lr", so decay_schedule "step"/"linear" decay alpha (the authors decay it linearly), not gamma.
    alpha: float | None = setting(None, Real(0, 1, low_open=True, none=True))
    # multiply gamma (latent mode: lr) by this every gamma_decay_every epochs
    gamma_decay: float = setting(1.0, Real(0, 1, low_open=True))
    gamma_decay_every: int | None = setting(None, Int(1, none=True))  # epochs; None: constant
    # "step": the staircase above | "linear": multiply gamma (latent mode: lr) by 1 - epoch / epochs at each epoch,
    # down to 0 over the run (ReActNet's and AdamBNN's schedule, arXiv:2003.03488, arXiv:2009.13799) |
    # "interpolate": before every optimizer step, set each of gamma, threshold, sigma and lr that has an *_end below
    # to (start - end) * (1 - step / steps) + end, linear in value from its field's value at the first step to *_end
    # at the end of the run (the Bop2ndOrder authors' CIFAR-10 recipe: Keras' PolynomialDecay, power 1, per step;
    # torchbop.training.optimizers). Rates without an *_end stay constant.
    decay_schedule: str = setting("step", Choice(DECAY_SCHEDULES))
    # "interpolate": the rate at the end of the run; at most 1 where the rate is (gamma, sigma): a rule
    gamma_end: float | None = setting(None, Real(0, none=True))  # gamma (mode bop, optimizer bop or bop2nd)
    threshold_end: float | None = setting(None, Real(0, none=True))  # tau (same)
    sigma_end: float | None = setting(None, Real(0, none=True))  # sigma (optimizer bop2nd)
    lr_end: float | None = setting(None, Real(0, none=True))  # Adam's (latent mode: the optimizer's) lr
    # Adam/SGD learning rate: the non-binary parameters (mode bop) or all of them (mode latent)
    lr: float = setting(0.01, Real(0))
    # mode latent: the learning rate of the non-binary parameters (batch norm), a second param group; None: lr
    other_lr: float | None = setting(None, Real(0, none=True))
    momentum: float = setting(0.0, Real(0, 1, high_open=True))  # optimizer "sgd" only
    # stop after this many consecutive epochs without a single flip
    early_stop_flip_epochs: int | None = setting(None, Int(1, none=True))
    # "last": weights at the end | "best": lowest validation loss (reproduction)
    test_weights: str = setting("last", Choice(TEST_WEIGHTS))
    # Batch norm's running statistics lag weights that still flip. "end": before the test, recompute every batch
    # norm's running mean and variance over the training set (no augmentation, dataset order, batches of batch_size,
    # cumulative average) with the weights tested | "eval": also before every validation | "off": keep the running
    # averages of training. Its cost is reported (torchbop.training.data.recalibrate_batch_norm).
    recalibrate_bn: str = setting("off", Choice(RECALIBRATIONS))

    # --- runtime ------------------------------------------------------------------------------------------------
    seed: int = setting(0, Int(0, 2**32 - 1))  # numpy's and Lightning's seed range
    # "auto": bf16-mixed where the device runs bf16 natively, else 32 (resolved when the run starts, see
    # torchbop.training.precision) | "32" | "bf16-mixed" (autocast; parameters and optimizer state stay fp32)
    precision: str = setting(
        "32", Choice(PRECISIONS, hint=(("16", _FP16), ("16-mixed", _FP16), ("bf16", "write bf16-mixed")))
    )
    accelerator: str = setting("auto", Choice(ACCELERATORS, hint=(("tpu", "torchbop is not tested on TPUs"),)))
    devices: Union[int, str] = setting(1, _DEVICES)  # per node; on CPU, the number of processes
    num_nodes: int = setting(1, Int(1))
    strategy: str = setting("auto", Choice(STRATEGIES))  # "ddp" for several devices
    # batches (int) or a fraction of them (float) per epoch; None: all
    limit_train_batches: Union[int, float, None] = setting(
        None,
        AnyOf(
            (Int(1), Real(0, 1, low_open=True)),
            none=True,
            rule="a number of batches >= 1 or a fraction in (0, 1]",
            examples=("0", "-1", "1.5", "2.0"),
        ),
    )
    # same, for validation and test; 0: no validation (and no best checkpoint)
    limit_eval_batches: Union[int, float, None] = setting(
        None,
        AnyOf(
            (Int(0), Real(0, 1)),
            none=True,
            rule="a number of batches >= 0 (0: no validation) or a fraction in [0, 1]",
            examples=("-1", "1.5", "2.0"),
        ),
    )
    out: str | None = setting(None, Folder(none=True))  # None: runs/<name>
    log_every_n_steps: int = setting(50, Int(1))
    # also write last.ckpt mid-epoch every N optimizer steps
    checkpoint_every_n_steps: int | None = setting(None, Int(1, none=True))
    # a checkpoint file, or a run directory (its checkpoints/last.ckpt)
    resume: str | None = setting(None, Text(rule="a run folder or a checkpoint file", none=True))
    progress_bar: bool = setting(True, Bool())
    # the GPU path: torch.compile the training forward and loss, fused Bop/Adam on CUDA, inf/NaN gradients checked
    # every log_every_n_steps steps instead of every step (no host sync per step); see torchbop.training.loop
    compile: bool = setting(False, Bool())

    def __post_init__(self) -> None:
        """Types first (each field's domain, coercing lossless forms), the optimizer's own rules (whose messages
        name the optimizer), then every range, then the rules between fields."""
        domains = field_domains()
        for key, domain in domains.items():
            object.__setattr__(self, key, domain.check(key, getattr(self, key), ranges=False))
        self._check_optimizer_options()
        for key, domain in domains.items():
            domain.check(key, getattr(self, key))
        self._check_rules()

    def _check_rules(self) -> None:
        """The rules between fields (each field is inside its own domain by now)."""
        _check_choice("optimizer", self.optimizer, OPTIMIZERS[self.mode], f" for mode {self.mode!r}")
        if self.decay_schedule != "step" and (self.gamma_decay_every is not None or self.gamma_decay != 1.0):
            what = "decays to 0" if self.decay_schedule == "linear" else "moves the rates to their *_end"
            raise ValueError(
                f"decay_schedule {self.decay_schedule!r} {what} over the run by itself; remove "
                "gamma_decay and gamma_decay_every (they set the 'step' schedule)"
            )
        if self.other_lr is not None and self.mode != "latent":
            raise ValueError(
                f"other_lr applies to mode 'latent' only (in mode {self.mode!r}, lr is already the "
                "non-binary parameters' learning rate); remove other_lr"
            )
        if self.momentum != 0.0 and self.optimizer != "sgd":
            raise ValueError(
                f"momentum is SGD's (mode latent, optimizer sgd); optimizer {self.optimizer!r} does not "
                "use it: remove momentum or set optimizer: sgd"
            )
        if self.test_weights == "best" and self.protocol == "original":
            raise ValueError(
                "test_weights='best' with protocol 'original' would pick the weights on the test set; "
                "use protocol 'reproduction' (a held-out validation split) or test_weights='last'"
            )
        images = DATASETS[self.dataset].train_size
        if self.protocol == "reproduction":
            images -= round(images * self.val_fraction)
        if self.subset is not None and self.subset > images:
            raise ValueError(
                f"Invalid subset value: {self.subset} ({self.dataset} has {images} training images"
                f"{' after the validation split' if self.protocol == 'reproduction' else ''}): give "
                f"at most {images}, or remove subset to train on all of them"
            )
        images = min(images, self.subset or images)
        if self.batch_size > images:
            raise ValueError(
                f"Invalid batch_size value: {self.batch_size} (more than the {images} training images: "
                f"the run would train 0 steps): give at most {images}"
            )
        if self.accelerator == "cpu" and not (
            self.devices == "auto" or isinstance(self.devices, int) and self.devices > 0
        ):
            raise ValueError(
                f"Invalid devices value: {self.devices!r} for accelerator 'cpu' (device indices and -1 "
                "name GPUs): give the number of CPU processes, e.g. 2"
            )

    def _check_optimizer_options(self) -> None:
        """The options that belong to one optimizer or one schedule: CEMA's alpha, Bop2ndOrder's unbiased, *_end."""
        if self.optimizer == "cema":
            if self.alpha is None:
                raise ValueError(
                    "optimizer 'cema' needs alpha, the rate of its inertia in (0, 1]: set alpha (the "
                    "authors' CIFAR-10 runs use values around 1e-3 to 1e-2)"
                )
            for key in ("alpha", "gamma"):
                if not 0.0 < getattr(self, key) <= 1.0:
                    raise ValueError(f"Invalid {key} value: {getattr(self, key)} (CEMA expects a number in (0, 1])")
        elif self.alpha is not None:
            raise ValueError(
                f"alpha is CEMA's inertia rate (optimizer 'cema'); optimizer {self.optimizer!r} does "
                "not use it: remove alpha or set optimizer: cema"
            )
        if self.unbiased and self.optimizer != "bop2nd":
            raise ValueError(
                f"unbiased=True selects Bop2ndOrder's unbiased variant (optimizer 'bop2nd'); optimizer "
                f"{self.optimizer!r} has none: remove unbiased or set optimizer: bop2nd"
            )
        ends = [f"{k}_end" for k in INTERPOLATED if getattr(self, f"{k}_end") is not None]
        if self.decay_schedule != "interpolate":
            if ends:
                raise ValueError(
                    f"{', '.join(ends)} set(s) where a rate ends under decay_schedule 'interpolate' "
                    f"(here {self.decay_schedule!r}): set decay_schedule: interpolate or remove it"
                )
            return
        if not ends:
            raise ValueError(
                "decay_schedule 'interpolate' moves the rates that have an end value, and none has: set "
                "one or more of gamma_end, threshold_end, sigma_end, lr_end"
            )
        allowed = {"lr_end"}
        if self.mode == "bop" and self.optimizer in ("bop", "bop2nd"):
            allowed |= {"gamma_end", "threshold_end"}
        if self.optimizer == "bop2nd":
            allowed.add("sigma_end")
        if self.optimizer == "cema":
            allowed = set()
        for key in ends:
            if key not in allowed:
                raise ValueError(
                    f"{key} is not a rate of optimizer {self.optimizer!r} in mode {self.mode!r} "
                    f"(interpolated there: {', '.join(sorted(allowed)) or 'none'}); remove {key}"
                    + ("; CEMA's alpha follows decay_schedule 'step' or 'linear'" if self.optimizer == "cema" else "")
                )
        for key in ends:  # an end is a value of its rate, where 0 is allowed: gamma_end, sigma_end in [0, 1]
            value = getattr(self, key)
            if key in ("gamma_end", "sigma_end") and value > 1.0:
                raise ValueError(f"Invalid {key} value: {value} (expected a number in [0, 1])")
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
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (typed like :meth:`from_dict`)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def field_domains() -> dict[str, Domain]:
    """``{field: its Domain}`` of :class:`TrainConfig`, read from the dataclass (a field without one is a bug)."""
    domains = {}
    for f in dataclasses.fields(TrainConfig):
        if "domain" not in f.metadata:
            raise TypeError(f"TrainConfig.{f.name} declares no domain: declare it as setting(default, domain)")
        domains[f.name] = f.metadata["domain"]
    return domains


# ----------------------------------------------------------------------------------------------------------------
# what depends on this machine and its files
# ----------------------------------------------------------------------------------------------------------------
def check_environment(config: TrainConfig) -> None:
    """The part of each domain that depends on this machine and its files, checked before a run writes anything.

    ``resume`` names a checkpoint that exists, the accelerator is on this machine and the devices exist there, and
    the model accepts ``model_kwargs`` and the dataset's images: it is built on the ``meta`` device (no memory, no
    computation) and given one image of the dataset's :attr:`~torchbop.data.datasets.Dataset.input_shape`, and must
    return one score per class.

    Raises:
        ValueError: naming the key, the value and the fix.
    """
    if config.resume is not None:
        path = Path(config.resume).expanduser()
        checkpoint = path / "checkpoints" / "last.ckpt" if path.is_dir() else path
        if not checkpoint.is_file():
            raise ValueError(
                f"Invalid resume value: {config.resume!r} ({checkpoint}: no checkpoint to resume from; "
                "give a run folder that holds checkpoints/last.ckpt, or a .ckpt file)"
            )
    _check_hardware(config.accelerator, config.devices)
    _check_model(config)


def _check_hardware(accelerator: str, devices: int | str) -> None:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    if accelerator in ("gpu", "cuda", "mps") and not (gpus or mps and accelerator != "cuda"):
        raise ValueError(
            f"accelerator {accelerator!r}: this machine has no {accelerator} device that torch can use. "
            "Use --accelerator auto (the best available) or cpu."
        )
    on_gpu = accelerator != "cpu" and gpus > 0
    if not on_gpu and not (devices == "auto" or isinstance(devices, int) and devices > 0):
        raise ValueError(
            f"Invalid devices value: {devices!r} (this run is on CPU, where device indices and -1 name "
            "no device): give the number of CPU processes, e.g. 2"
        )
    if on_gpu and isinstance(devices, str) and devices != "auto":
        indices = [int(i) for i in devices.split(",") if i.strip()]
        if max(indices) >= gpus or len(set(indices)) < len(indices):
            raise ValueError(
                f"Invalid devices value: {devices!r} (this machine has GPUs 0..{gpus - 1}; each index once)"
            )
    if on_gpu and isinstance(devices, int) and devices > gpus:
        raise ValueError(f"Invalid devices value: {devices} (this machine has {gpus} GPU(s)): give at most {gpus}")


def _check_model(config: TrainConfig) -> None:
    dataset = DATASETS[config.dataset]
    try:
        with torch.device("meta"):
            model = create_model(config.model, mode=config.mode, **config.model_kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Invalid model_kwargs value: {config.model_kwargs} for model {config.model!r}: {error}"
        ) from None
    try:
        with torch.device("meta"), torch.no_grad():
            scores = model.eval()(torch.empty(2, *dataset.input_shape))
    except (RuntimeError, ValueError) as error:
        raise ValueError(
            f"Invalid dataset value: {config.dataset!r} for model {config.model!r} "
            f"{config.model_kwargs or ''}: it does not take images {list(dataset.input_shape)} "
            f"({str(error).splitlines()[0]}); choose a model made for {config.dataset}"
        ) from None
    if tuple(scores.shape) != (2, len(dataset.classes)):
        raise ValueError(
            f"Invalid model_kwargs value: {config.model_kwargs} for model {config.model!r}: it returns "
            f"{list(scores.shape[1:])} scores per image where {config.dataset} has "
            f"{len(dataset.classes)} classes (set num_classes)"
        )


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
            raise FileNotFoundError(
                f"Recipe file not found: {path} (shipped recipes: {', '.join(available_recipes())})"
            )
        return path
    shipped = resources.files("torchbop") / "recipes" / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ValueError(
            f"Unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(available_recipes())} "
            "(or give the path of a .yaml file)"
        )
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
    for key, value in parse_assignments(overrides).items():
        head, dot, sub = key.partition(".")
        _check_unknown({head: None})
        if dot and head != "model_kwargs":
            raise ValueError(f"Invalid --set {key}={value!r}: only model_kwargs.<name>=value takes a dotted key")
        if dot:
            changes["model_kwargs"] = {**changes.get("model_kwargs", config.model_kwargs), sub: value}
        else:
            changes[key] = value
    return config.replace(**changes) if changes else config


def _check_unknown(values: dict[str, Any]) -> None:
    check_known("TrainConfig", values, [f.name for f in dataclasses.fields(TrainConfig)])


def _check_choice(key: str, value: str, choices: tuple[str, ...], where: str = "") -> None:
    if value not in choices:
        raise ValueError(f"Invalid {key} value: {value!r}{where} (expected one of {', '.join(map(repr, choices))})")
