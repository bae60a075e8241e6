r"""Experiment 2, the arbitrary learning rate (reproducibility report 3.1.2, Figure 1; the paper's Theorem 1).

**Figure 1.** The MNIST BNN trained with latent weights in five configurations, test accuracy after every epoch:

====  =====================================  =========  ======
      initial latent weights                 optimizer  lr
====  =====================================  =========  ======
1     Glorot normal                          SGD        0.01
2     Glorot uniform                         SGD        1
3     Glorot uniform x 0.01                  SGD        0.01
4     uniform U(-1, 1)                       SGD        0.01
5     uniform U(-1, 1)                       Adam       0.01
====  =====================================  =========  ======

The report calls configuration 1 "Glorot initialization" and 2-3 "Glorot uniform"; we read the former as Glorot
*normal* (``torchbop.nn.init_binary_weights_``'s ``"glorot_normal"``). As in the report's Keras setup, one optimizer
trains every parameter (batch norm included) at the configuration's learning rate, latent weights are clipped to
[-1, 1] and the STE saturates at 1; batch size 32, the test set as validation set. Expected: 2 and 3 behave
identically, 1 and 4 alike, 1 differs from 2/3.

**Theorem 1, checked exactly.** Scaling the initial latent weights and the learning rate by the same factor leaves
the binary weights' trajectory unchanged, provided the pseudo-gradient does not depend on the weights' magnitude.
Two runs of the MNIST BNN go in lockstep over the same batches: run A (Glorot uniform, SGD lr 0.01) and run B (the
same draw times a power of two ``factor``, latent-weight lr times ``factor``), with no latent clipping and a weight
STE without saturation (``SteSign(clip_value=inf)``); batch norm trains at the unscaled lr in both runs. After every
step the signs of all binary weights of A and B are compared; the result is the number of differing weights summed
over all steps, which must be 0 (powers of two make the scaling exact in floating point). A control repeats the
comparison with the usual BNN setup (clipping to [-1, 1], STE saturating at 1) and a factor that puts B's weights
beyond the clip, where the theorem's assumption fails: its count should be positive, showing the check can fail.

**Why configurations 2 and 3 can differ.** They differ from Theorem 1's setting in three ways: the factor 0.01 is
not a power of two (the scaled run rounds differently), the latent weights are clipped and the STE saturates (both
depend on the weights' magnitude), and one optimizer trains batch norm at the configuration's learning rate (1 in
configuration 2, 0.01 in 3), which the theorem does not scale. The ablation runs the lockstep comparison from
configuration 2 (Glorot uniform, SGD lr 1) against its scaled copy with one of the three changed at a time
(:data:`ABLATION`), and once with all three (Figure 1 as run): the first step at which a binary weight differs and
how many differ at the end show which difference breaks the equality. At full length, configuration "2b" (not the
paper's) trains configuration 2 with batch norm at configuration 3's lr (0.01): its accuracy curve against 3's shows
what is left of the gap between 2 and 3 once batch norm's lr is the same; configuration "3p" is 2b scaled by
2^-7 (initial latent weights and their lr; batch norm at 0.01), which Theorem 1 makes equal to 2b to the last bit
until clipping acts on 2b (3p's weights are 128 times smaller and are not clipped). At full length, 2 against 2b
differ in batch norm's lr only, 2b against 3p in clipping only, 3p against 3 in the factor only (2^-7, exact, against
0.01, which rounds; neither is ever clipped): :data:`DECOMPOSITION`. The report gives for how many epochs each pair's
recorded metrics are exactly equal, and its largest test-accuracy gap. The test accuracy of a single run can
move by points from one epoch to the next (batch norm's running statistics trail the flipping weights), so the
report also compares the training accuracy (batch statistics, averaged over the epoch: a smooth curve) and shows
each test curve's epoch-to-epoch noise beside the gaps. The claims' criteria use the largest test-accuracy gap over
the epochs (fixed before the runs); beside it the report gives the median gap and the number of epochs with a gap
above :data:`ALIKE`, since a single epoch's dip can decide the largest.

**Why configurations 1 and 4 can differ.** The report's "uniform random initialization" does not give a range. We
read it as U(-1, 1), the latent weights' whole range (configuration 4). The report's Keras setup suggests another
reading: Keras's ``random_uniform`` initializer defaults to U(-0.05, 0.05), close in spread to configuration 1's
Glorot draw (mean abs(w) 0.025 against 0.040 for this network), while U(-1, 1) is about twelve times wider than that
draw (mean abs(w) 0.50); by Theorem 1, a k times wider initialization at the same lr trains like a k times smaller
lr. Configuration "4k" (not the paper's) is configuration 4 with Keras's range: its curves against configuration 1's
show whether the range is what separates 1 and 4.

A killed invocation resumes the Figure-1 runs from their last checkpoint; a killed Theorem-1 check (a plain loop,
minutes long) starts again from its first step.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from torchbop.data import DeviceLoader
from torchbop.experiments.common import (
    load_data,
    run_config,
    seeded_model,
    set_weight_quantizers,
    stored_train_config,
    train_run,
)
from torchbop.experiments.plots import COLORS, scale_note
from torchbop.experiments.spec import RunContext, RunSpec
from torchbop.experiments.verdicts import Verdict
from torchbop.metrics import latent_at_clip
from torchbop.models import MnistBNN
from torchbop.nn import binary_parameters, clip_latent_weights_, init_binary_weights_, split_binary_params
from torchbop.quantizers import SteSign
from torchbop.training import TrainConfig
from torchbop.training.precision import resolve_precision

__all__ = [
    "NAME",
    "TITLE",
    "VERSION",
    "Config",
    "CONFIGS",
    "CONFIGURATIONS",
    "datasets",
    "plan",
    "execute",
    "theorem1_check",
    "describe",
    "summarize",
    "plot",
    "verdicts",
    "results",
]

NAME = "arbitrary-lr"
TITLE = "Figure 1 and Theorem 1: the arbitrary learning rate (report 3.1.2)"
VERSION = 1
KEEP_RUN_DIR = False
#: the exact check's settings, and the precision
NOT_SCALE = frozenset({"theorem_steps", "theorem_factor", "control_factor", "theorem_lr", "precision"})


@dataclass(frozen=True)
class Config:
    """Figure 1 (report 3.1.2) and an exact check of Theorem 1."""

    seeds: int = 1
    epochs: int = 100
    batch_size: int = 32
    subset: int | None = None
    test_subset: int | None = None
    theorem_steps: int = 2000  # optimizer steps of each exact Theorem-1 comparison
    theorem_factor: float = 2.0**-7  # scales the second run's initial latent weights and learning rate
    control_factor: float = 2.0**10  # the control's factor: puts nearly every latent weight past the STE's clip
    theorem_lr: float = 0.01  # SGD, the unscaled run (batch norm keeps it in both runs)
    # TrainConfig.precision of the training runs: "32", or "auto" (bf16-mixed where the device computes bf16
    # natively, else 32; resolved when the runs are planned, so the resolved value enters the run keys)
    precision: str = "32"


#: The settings at each profile (torchbop.experiments.profiles names them).
CONFIGS = {
    "paper": Config(),
    "cpu": Config(),  # the paper's scale: 8 x 100 epochs of MNIST (with 2b, 3p, 4k), about 11 CPU-hours (26 ms a step)
    "quick": Config(seeds=2, epochs=3, subset=6000, test_subset=5000, theorem_steps=300),
    "smoke": Config(seeds=1, epochs=1, subset=256, test_subset=256, theorem_steps=12),
}

#: name -> (description, init scheme, init scale, optimizer, lr, batch norm's lr: None is lr). "2b", "3p" and "4k"
#: are not the paper's: configuration 2 with batch norm at configuration 3's lr and 2b scaled by a power of two (the
#: full-length controls of the ablation below), and configuration 4 with Keras's default uniform range (see the
#: module docstring).
CONFIGURATIONS: dict[str, tuple[str, str, float, str, float, float | None]] = {
    "1": ("Glorot normal, SGD lr 0.01", "glorot_normal", 1.0, "sgd", 0.01, None),
    "2": ("Glorot uniform, SGD lr 1", "glorot_uniform", 1.0, "sgd", 1.0, None),
    "2b": ("control: 2 with batch norm at lr 0.01", "glorot_uniform", 1.0, "sgd", 1.0, 0.01),
    "3": ("Glorot uniform x0.01, SGD lr 0.01", "glorot_uniform", 0.01, "sgd", 0.01, None),
    "3p": ("control: 2b scaled by 2^-7 (init and lr)", "glorot_uniform", 2.0**-7, "sgd", 2.0**-7, 0.01),
    "4": ("uniform U(-1,1), SGD lr 0.01", "uniform", 1.0, "sgd", 0.01, None),
    "5": ("uniform U(-1,1), Adam lr 0.01", "uniform", 1.0, "adam", 0.01, None),
    "4k": ("control: 4 with Keras's random_uniform, U(-0.05,0.05)", "uniform", 0.05, "sgd", 0.01, None),
}
#: The report's own configurations; the others are our controls.
PAPER_CONFIGURATIONS = ("1", "2", "3", "4", "5")
#: Largest gap between seed-mean accuracy curves of configurations that behave "identically" / "alike".
IDENTICAL, ALIKE = 0.01, 0.02


INF = float("inf")
#: The ablation of Figure 1's configurations 2 and 3: name -> (factor, ste_clip, clip_latent, batch norm lr scaled).
ABLATION = {
    "power-of-two factor only (Theorem 1's setting)": (2.0**-7, INF, False, False),
    "factor 0.01 (not a power of two)": (0.01, INF, False, False),
    "clipping + saturating STE": (2.0**-7, 1.0, True, False),
    "batch norm's lr scaled too": (2.0**-7, INF, False, True),
    "all three (Figure 1 as run)": (0.01, 1.0, True, True),
}


def datasets(cfg: Config) -> tuple[str, ...]:
    return ("mnist",)


def plan(cfg: Config) -> list[RunSpec]:
    """The lockstep checks first (minutes), then the Figure-1 runs (hours at the paper's scale)."""
    specs = []
    common = {
        "kind": "theorem",
        "steps": cfg.theorem_steps,
        "lr": cfg.theorem_lr,
        "batch_size": cfg.batch_size,
        "subset": cfg.subset,
        "seed": 0,
        "scheme": "glorot_uniform",
    }
    specs.append(
        RunSpec(
            NAME, "theorem1", {**common, "factor": cfg.theorem_factor, "ste_clip": float("inf"), "clip_latent": False}
        )
    )
    specs.append(
        RunSpec(
            NAME, "theorem1-control", {**common, "factor": cfg.control_factor, "ste_clip": 1.0, "clip_latent": True}
        )
    )
    lr2 = CONFIGURATIONS["2"][4]  # configuration 2's learning rate: the unscaled run
    for i, (name, (factor, ste_clip, clip_latent, bn_scaled)) in enumerate(ABLATION.items()):
        specs.append(
            RunSpec(
                NAME,
                f"ablation{i + 1}",
                {
                    **common,
                    "kind": "ablation",
                    "name": name,
                    "lr": lr2,
                    "factor": factor,
                    "ste_clip": ste_clip,
                    "clip_latent": clip_latent,
                    "bn_lr_scaled": bn_scaled,
                },
            )
        )
    for name, (_, scheme, scale, optimizer, lr, other_lr) in CONFIGURATIONS.items():
        for seed in range(cfg.seeds):
            train = TrainConfig(
                name=f"arbitrary-lr-{name}",
                model="mnist_bnn",
                model_kwargs={"padding": "valid"},
                mode="latent",
                dataset="mnist",
                protocol="original",
                batch_size=cfg.batch_size,
                epochs=cfg.epochs,
                optimizer=optimizer,
                lr=lr,
                other_lr=other_lr,
                seed=seed,
                precision=resolve_precision(cfg.precision),
            )
            params = {
                "kind": "figure",
                "configuration": name,
                "scheme": scheme,
                "scale": scale,
                "seed": seed,
                "subset": cfg.subset,
                "test_subset": cfg.test_subset,
                "train": stored_train_config(train),
            }
            specs.append(RunSpec(NAME, f"config{name}-seed{seed}", params))
    return specs


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    if params["kind"] in ("theorem", "ablation"):
        data = load_data("mnist", ctx.data_dir, params["subset"], None)
        return theorem1_check(
            data["train"],
            steps=params["steps"],
            factor=params["factor"],
            lr=params["lr"],
            ste_clip=float(params["ste_clip"]),
            clip_latent=params["clip_latent"],
            batch_size=params["batch_size"],
            seed=params["seed"],
            scheme=params["scheme"],
            bn_lr_scaled=params.get("bn_lr_scaled", False),
        )
    data = load_data("mnist", ctx.data_dir, params["subset"], params["test_subset"])
    config = run_config(params["train"], ctx.run_dir)
    model = seeded_model(config)
    init_binary_weights_(
        model, params["scheme"], scale=params["scale"], generator=torch.Generator().manual_seed(config.seed)
    )
    initial = float(torch.cat([w.detach().abs().flatten() for w in binary_parameters(model)]).mean())
    result, history = train_run(config, data, model, log=ctx.log)
    return {"test_acc": result["test_acc"], "initial_latent_abs_mean": initial, "history": history["epochs"]}


def theorem1_check(
    train: tuple[torch.Tensor, torch.Tensor],
    *,
    steps: int,
    factor: float,
    lr: float,
    ste_clip: float = float("inf"),
    clip_latent: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    scheme: str = "glorot_uniform",
    bn_lr_scaled: bool = False,
) -> dict[str, Any]:
    """Train runs A (scale 1) and B (scale ``factor``) in lockstep; count binary weights whose signs differ.

    B's latent weights start at ``factor`` times A's and train at ``factor`` times A's lr ``lr``; batch norm trains
    at ``lr`` in both runs, or with ``bn_lr_scaled`` at ``factor * lr`` in B (as one optimizer for every parameter
    does in Figure 1).

    Returns ``differing_total`` (summed over steps; 0 when the trajectories agree bit for bit), ``differing_max``,
    ``first_difference_step`` (None when none), ``flips_total`` (sign changes in run A: the trajectory is not
    trivially constant), ``latent_abs_max`` and ``latent_at_clip`` (run A's largest latent ``|w|`` and its fraction
    of latent weights at ``|w| >= 1`` after the last step: below 1 and 0, clipping and the STE's saturation never
    acted), and the per-step ``differing`` and ``flips`` lists.
    """

    def make(scale: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = MnistBNN(mode="latent", padding="valid")
        init_binary_weights_(model, scheme, scale=scale, generator=torch.Generator().manual_seed(seed))
        set_weight_quantizers(model, lambda: SteSign(clip_value=ste_clip))
        binary, other = split_binary_params(model, modes=("latent",))
        # the latent weights' learning rate is scaled; batch norm's only with bn_lr_scaled
        optimizer = torch.optim.SGD(
            [{"params": binary, "lr": lr * scale}, {"params": other, "lr": lr * (scale if bn_lr_scaled else 1.0)}]
        )
        return model, optimizer

    runs = [make(1.0), make(factor)]
    loader = DeviceLoader(train[0], train[1], batch_size, shuffle=True, seed=seed, drop_last=True)
    signs = lambda m: torch.cat([(w >= 0).flatten() for w in binary_parameters(m)])  # noqa: E731
    previous = signs(runs[0][0])
    differing: list[int] = []
    flips: list[int] = []
    while len(differing) < steps:
        for x, y in loader:
            for model, optimizer in runs:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
                if clip_latent:
                    clip_latent_weights_(model)
            a, b = signs(runs[0][0]), signs(runs[1][0])
            differing.append(int((a != b).sum()))
            flips.append(int((a != previous).sum()))
            previous = a
            if len(differing) == steps:
                break
    first = next((i + 1 for i, d in enumerate(differing) if d), None)
    reference = runs[0][0]  # where its latent weights ended: whether clipping and saturation could have acted
    largest = max(float(w.detach().abs().max()) for w in binary_parameters(reference))
    return {
        "differing_total": sum(differing),
        "differing_max": max(differing),
        "first_difference_step": first,
        "flips_total": sum(flips),
        "steps": steps,
        "binary_weights": int(previous.numel()),
        "factor": factor,
        "ste_clip": ste_clip,
        "clip_latent": clip_latent,
        "latent_abs_max": largest,
        "latent_at_clip": latent_at_clip(reference),
        "differing": differing,
        "flips": flips,
    }


def describe(result: dict[str, Any]) -> str:
    if "differing_total" in result:
        return (
            f"{result['differing_total']} differing binary weights over {result['steps']} steps "
            f"({result['flips_total']} flips in the reference run)"
        )
    return f"test accuracy {result['test_acc']:.4f}"


def summarize(records: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """Per configuration: seed-mean test accuracy per epoch; the largest gaps between the curves the claims
    compare; and the Theorem-1 counts."""
    curves: dict[str, list[list[float]]] = {}
    train_curves: dict[str, list[list[float]]] = {}  # training accuracy (batch statistics): smooth, unlike the test's
    at_clip: dict[str, list[float]] = {}  # the fraction of latent weights at the clip after the last epoch
    histories: dict[tuple[str, int], list[dict[str, Any]]] = {}  # (configuration, seed) -> per-epoch metrics
    theorem: dict[str, Any] = {}
    ablation: dict[str, Any] = {}
    for record in records:
        params, result = record["params"], record["result"]
        if params["kind"] == "theorem":
            name = "control" if params["clip_latent"] else "check"
            theorem[name] = {k: v for k, v in result.items() if k not in ("differing", "flips")}
            continue
        if params["kind"] == "ablation":
            ablation[params["name"]] = {
                "first_difference_step": result["first_difference_step"],
                "differing_at_end": result["differing"][-1],
                "steps": result["steps"],
                "binary_weights": result["binary_weights"],
                "latent_abs_max": result.get("latent_abs_max"),
            }
            continue
        curves.setdefault(params["configuration"], []).append(
            [e.get("val_acc", float("nan")) for e in result["history"]]
        )
        train_curves.setdefault(params["configuration"], []).append(
            [e.get("train_acc", float("nan")) for e in result["history"]]
        )
        histories[params["configuration"], params.get("seed", 0)] = result["history"]
        if result["history"] and "latent_at_clip" in result["history"][-1]:
            at_clip.setdefault(params["configuration"], []).append(result["history"][-1]["latent_at_clip"])
    mean_curves = {name: [statistics.fmean(v) for v in zip(*runs)] for name, runs in sorted(curves.items())}
    mean_train = {name: [statistics.fmean(v) for v in zip(*runs)] for name, runs in sorted(train_curves.items())}
    rows = [
        {
            "configuration": name,
            "description": CONFIGURATIONS[name][0],
            "epoch": i + 1,
            "test_acc": acc,
            "seeds": len(curves[name]),
        }
        for name, curve in mean_curves.items()
        for i, acc in enumerate(curve)
    ]

    def gap(a: str, b: str) -> float | None:
        if a not in mean_curves or b not in mean_curves:
            return None
        return max(abs(x - y) for x, y in zip(mean_curves[a], mean_curves[b]))

    pairs = (
        ("2", "3"),
        ("1", "4"),
        ("1", "2"),
        ("1", "3"),
        ("4", "5"),
        ("2b", "3"),
        ("2", "2b"),
        ("1", "4k"),
        ("2b", "3p"),
        ("3p", "3"),
    )
    gaps = {f"{a}-{b}": gap(a, b) for a, b in pairs}
    # beside the criterion's largest gap (one epoch's spike can decide it): the typical gap, and how often it is large
    spread = {
        f"{a}-{b}": _gap_spread(mean_curves[a], mean_curves[b])
        for a, b in pairs
        if a in mean_curves and b in mean_curves
    }
    train_gaps = {
        f"{a}-{b}": _train_gap(mean_train[a], mean_train[b]) for a, b in pairs if a in mean_train and b in mean_train
    }
    test_noise = {name: _epoch_noise(curve) for name, curve in mean_curves.items()}
    same_epochs = {f"{a}-{b}": _same_epochs(histories, a, b) for a, b in EXACT_PAIRS}
    finals = {name: curve[-1] for name, curve in mean_curves.items() if curve}
    ablation = {name: ablation[name] for name in ABLATION if name in ablation}
    at_clip_means = {name: statistics.fmean(v) for name, v in sorted(at_clip.items())}
    return {
        "curves": mean_curves,
        "final_test_acc": finals,
        "final_latent_at_clip": at_clip_means,
        "max_gaps": gaps,
        "gap_spread": spread,
        "train_curves": mean_train,
        "train_gaps": train_gaps,
        "test_noise": test_noise,
        "same_epochs": {pair: n for pair, n in same_epochs.items() if n is not None},
        "theorem1": theorem,
        "ablation": ablation,
        "tables": {"figure1": rows, "ablation": [{"change": k, **v} for k, v in ablation.items()]},
    }


#: Configurations 2 and 3 differ from Theorem 1's setting in three ways; the full-length controls 2b and 3p take
#: them one at a time: (pair, what differs between its two runs). 3p never reaches the clip (its latent weights are
#: 2^-7 times 2b's, which are clipped at 1), nor does 3; the STE passes the gradient at abs(w) <= 1, so with clipping
#: at 1 it never saturates.
DECOMPOSITION = (
    (("2", "2b"), "batch norm's lr: 1 against 0.01"),
    (("2b", "3p"), "clipping: 2b's latent weights are clipped at 1, 3p's (2^-7 times 2b's) never reach it"),
    (("3p", "3"), "the factor: 2^-7 (exact in floating point) against 0.01 (rounds)"),
    (("2", "3"), "all three (Figure 1 as run)"),
)
EXACT_PAIRS = tuple(pair for pair, _ in DECOMPOSITION)
#: The per-epoch metrics compared exactly: the learning rate and the share of latent weights at the clip differ by
#: construction.
EXACT_METRICS = ("train_acc", "train_loss", "val_acc", "val_loss", "flips")


def _same_epochs(histories: dict[tuple[str, int], list[dict[str, Any]]], a: str, b: str) -> dict[str, int] | None:
    """For how many leading epochs configurations ``a`` and ``b`` recorded exactly the same metrics
    (:data:`EXACT_METRICS`), the fewest over the seeds both have; ``None`` without a common seed."""
    seeds = sorted(seed for name, seed in histories if name == a and (b, seed) in histories)
    if not seeds:
        return None
    counts = []
    for seed in seeds:
        ours, theirs = histories[a, seed], histories[b, seed]
        same = 0
        for x, y in zip(ours, theirs):
            if any(k not in x or k not in y or x[k] != y[k] for k in EXACT_METRICS):  # unrecorded is not equal
                break
            same += 1
        counts.append(same)
    return {
        "same": min(counts),
        "epochs": min(min(len(histories[a, s]), len(histories[b, s])) for s in seeds),
        "seeds": len(seeds),
    }


#: The full-length controls' comparisons: configuration -> the configuration it should track.
REFERENCES = {"2": "2b", "2b": "3p", "3": "3p", "4": "1", "4k": "1"}


def _plot_training_gaps(axes: Any, train: dict[str, list[float]], styles: dict[str, str]) -> None:
    """Training accuracy minus the reference's per epoch (:data:`REFERENCES`: one of configurations 2 and 3's
    differences at a time, and 4 and 4k against 1); with none of those pairs, the curves."""
    names = list(train)
    pairs = [(name, ref) for name, ref in REFERENCES.items() if name in train and ref in train]
    if pairs:
        for name, ref in pairs:
            gaps = [a - b for a, b in zip(train[name], train[ref])]
            axes.plot(
                range(1, len(gaps) + 1),
                gaps,
                ls=styles.get(name, "-"),
                color=COLORS[names.index(name)],
                label=f"{name} minus {ref}",
            )
        axes.axhline(0.0, color="gray", lw=1)
        axes.set_ylabel("training accuracy minus the reference's")
        axes.set_title("pairs compared: training accuracy minus the reference's")
    else:
        for name, curve in train.items():
            axes.plot(
                range(1, len(curve) + 1), curve, ls=styles.get(name, "-"), color=COLORS[names.index(name)], label=name
            )
        axes.set_ylabel("training accuracy, batch statistics (mean over seeds)")
        axes.set_title("the same runs: training accuracy (smooth)")
    axes.legend(fontsize=7)


def _train_gap(a: list[float], b: list[float]) -> dict[str, Any]:
    """Training-accuracy curves ``a`` minus ``b`` over the epochs both have: the mean signed gap and the largest
    absolute one. The training accuracy is measured with batch statistics over a whole epoch, so it moves smoothly;
    the test accuracy, through batch norm's running statistics, can move by points from one epoch to the next."""
    diffs = [x - y for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    if not diffs:
        return {"epochs": 0, "mean": None, "max_abs": None}
    return {"epochs": len(diffs), "mean": statistics.fmean(diffs), "max_abs": max(abs(d) for d in diffs)}


def _gap_spread(a: list[float], b: list[float]) -> dict[str, Any]:
    """The absolute gaps between curves ``a`` and ``b``, epoch by epoch: their median, and in how many of the
    epochs they exceed :data:`ALIKE`."""
    gaps = [abs(x - y) for x, y in zip(a, b)]
    return {
        "epochs": len(gaps),
        "median": statistics.median(gaps) if gaps else None,
        "above": sum(g > ALIKE for g in gaps),
    }


def _epoch_noise(curve: list[float]) -> float | None:
    """How much a test-accuracy curve moves from one epoch to the next: the median absolute change."""
    steps = [abs(b - a) for a, b in zip(curve, curve[1:]) if not (math.isnan(a) or math.isnan(b))]
    return statistics.median(steps) if steps else None


def plot(fig: Figure, records: list[dict[str, Any]], summary: dict[str, Any], config: Config) -> None:
    fig.set_size_inches(15, 4.4)
    left, middle, right = fig.subplots(1, 3)
    styles = {"2": "-", "3": "--", "2b": ":", "3p": "-.", "4k": ":"}
    names = list(summary["curves"])  # a configuration has one colour in both panels
    for name, curve in summary["curves"].items():
        if name not in PAPER_CONFIGURATIONS:  # the controls appear in the middle panel, as differences
            continue
        epochs = list(range(1, len(curve) + 1))
        left.plot(
            epochs,
            curve,
            marker="o",
            ms=3,
            ls=styles.get(name, "-"),
            color=COLORS[names.index(name)],
            label=f"{name}: {CONFIGURATIONS[name][0]}",
        )
    left.set_ylabel("test accuracy (mean over seeds)")
    left.set_title("Figure 1: test accuracy (the report's five configurations)")
    left.legend(fontsize=7)
    _plot_training_gaps(middle, summary.get("train_curves", {}), styles)
    for axes in (left, middle):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))

    theorem = {
        ("control" if r["params"]["clip_latent"] else "check"): r["result"]
        for r in records
        if r["params"]["kind"] == "theorem"
    }  # the ablation runs are in the report's table
    for i, (name, result) in enumerate(sorted(theorem.items())):
        steps = range(1, len(result["differing"]) + 1)
        what = "no clipping, STE without saturation" if name == "check" else "clipping + saturating STE"
        right.plot(
            steps,
            result["differing"],
            color=COLORS[i + 1],
            label=f"{name}: factor {result['factor']:g}, {what}; total {result['differing_total']}",
        )
        if name == "check":
            right.plot(
                steps,
                result["flips"],
                color="gray",
                lw=0.7,
                alpha=0.7,
                label=f"flips per step of the reference run (total {result['flips_total']})",
            )
    right.set_yscale("symlog", linthresh=1)
    top = max([1] + [max(r["differing"] + r["flips"]) for r in theorem.values()])
    right.set_ylim(-0.3, top * 300)  # headroom for the legend
    right.set_xlabel("optimizer step")
    right.set_ylabel("binary weights that differ between the runs")
    right.set_title("Theorem 1: scaled init + lr, exact comparison")
    if theorem:
        right.legend(fontsize=7, loc="upper left")
    else:  # a profile still running: the panel says so instead of an empty legend
        right.text(0.5, 0.5, "Theorem 1's runs not stored yet", ha="center", va="center", transform=right.transAxes)
    fig.suptitle(f"Arbitrary learning rate ({scale_note(config)})", fontsize=10)


def verdicts(summary: dict[str, Any]) -> list[Verdict]:
    out = []
    theorem = summary.get("theorem1", {})
    check, control = theorem.get("check"), theorem.get("control")
    if check is not None:
        measured = (
            f"{check['differing_total']} differing weights over {check['steps']} steps "
            f"(factor {check['factor']:g}; {check['flips_total']} flips in the reference run)"
        )
        met: bool | None = check["differing_total"] == 0
        if control is not None:
            measured += (
                f"; control (factor {control['factor']:g}, clipping + saturating STE): "
                f"{control['differing_total']} differing"
            )
        if check["flips_total"] == 0 or control is None or control["differing_total"] == 0:
            met = None if met else False  # a check that could not fail proves nothing
        out.append(
            Verdict(
                "Theorem 1: scaling the initial latent weights and the lr by the same factor leaves the binary "
                "trajectory unchanged (no clipping, unsaturated STE)",
                "0 differing binary weights after every step, with flips > 0 in the run and > 0 differing weights in "
                "the control",
                measured,
                met,
                scale_independent=True,
            )
        )
    gaps = summary.get("max_gaps", {})

    def gap_verdict(claim: str, pairs: list[str], limit: float, above: bool) -> Verdict:
        values = [gaps.get(p) for p in pairs]
        if any(v is None for v in values):
            return Verdict(claim, "-", "configurations missing", None)
        worst = min(values) if above else max(values)
        shown = ", ".join(f"{p}: {v:.4f}" for p, v in zip(pairs, values))
        criterion = f"max over epochs of abs(accuracy gap) {'>' if above else '<='} {limit} for " + " and ".join(pairs)
        return Verdict(claim, criterion, shown, worst > limit if above else worst <= limit)

    if gaps:
        out.append(
            gap_verdict(
                "Figure 1: configurations 2 and 3 (init and lr both x0.01) behave identically",
                ["2-3"],
                IDENTICAL,
                above=False,
            )
        )
        out.append(gap_verdict("Figure 1: configurations 1 and 4 behave alike", ["1-4"], ALIKE, above=False))
        out.append(gap_verdict("Figure 1: configuration 1 differs from 2 and 3", ["1-2", "1-3"], ALIKE, above=True))
    return out


def results(summary: dict[str, Any]) -> list[str]:
    at_clip = summary.get("final_latent_at_clip", {})
    rows = []
    if summary["final_test_acc"]:
        rows += [
            "| configuration | final test accuracy (seed mean) | latent weights at the clip (abs(w) >= 1) at the end |",
            "|---|---|---|",
        ]
        rows += [
            f"| {k}: {CONFIGURATIONS[k][0]} | {v:.4f} | "
            + (f"{100 * at_clip[k]:.2f}%" if k in at_clip else "not recorded")
            + " |"
            for k, v in summary["final_test_acc"].items()
        ]
    else:
        rows.append("No Figure-1 training run is stored yet.")
    gaps = [(k, v) for k, v in summary["max_gaps"].items() if v is not None]
    spread = summary.get("gap_spread", {})
    if gaps:
        rows += [
            "",
            "Gaps between seed-mean test-accuracy curves over the epochs (the claims' criteria use the "
            "largest; the median and the count show whether one epoch's spike decides it):",
            "",
            f"| configurations | largest gap | median gap | epochs with a gap above {ALIKE} |",
            "|---|---|---|---|",
        ]
        rows += [
            f"| {k.replace('-', ' vs ')} | {v:.4f} | "
            + (
                f"{spread[k]['median']:.4f} | {spread[k]['above']} of {spread[k]['epochs']} |"
                if k in spread
                else "- | - |"
            )
            for k, v in gaps
        ]
    ablation = summary.get("ablation", {})
    if ablation:
        rows += [
            "",
            "Why configurations 2 and 3 differ: configuration 2 (SGD lr 1) against its scaled copy in "
            "lockstep, one difference from Theorem 1's setting at a time:",
            "",
            "| what differs from Theorem 1's setting | first step with a differing binary weight | "
            "differing at the last step | largest latent abs(w) of the unscaled run at the end |",
            "|---|---|---|---|",
        ]
        rows += [
            f"| {name} | {a['first_difference_step'] or 'none'} | {a['differing_at_end']:,} of "
            f"{a['binary_weights']:,} (step {a['steps']}) | "
            + ("not recorded" if a.get("latent_abs_max") is None else f"{a['latent_abs_max']:.3f}")
            + " |"
            for name, a in ablation.items()
        ]
        clipped = ablation.get("clipping + saturating STE", {})
        if clipped.get("latent_abs_max") is not None and clipped["latent_abs_max"] < 1:
            rows += [
                "",
                f"In the clipping row the unscaled run's latent weights stayed below 1 (largest "
                f"{clipped['latent_abs_max']:.3f}): within {clipped['steps']} steps clipping and the STE's "
                "saturation never acted, so that row cannot show their effect; the Figure-1 runs' share of "
                "latent weights at the clip (table above) shows whether they act over the full length.",
            ]
    rows += _decomposition_rows(summary)
    control, figure = summary["max_gaps"].get("1-4k"), summary["max_gaps"].get("1-4")
    if control is not None and figure is not None:
        rows += [
            "",
            f"Configuration 4 with Keras's uniform range U(-0.05, 0.05) (4k) against 1: largest "
            f"test-accuracy gap {control:.4f}, against {figure:.4f} for 4 (U(-1, 1)) against 1 (limit for "
            f'"alike": {ALIKE}).',
        ]
    train_gaps, noise = summary.get("train_gaps", {}), summary.get("test_noise", {})
    shown = [
        (pair, train_gaps[pair])
        for pair in ("2-2b", "2b-3p", "3p-3", "2-3", "2b-3", "1-4", "1-4k", "4-5")
        if train_gaps.get(pair, {}).get("mean") is not None
    ]
    if shown:
        rows += [
            "",
            "Training accuracy (batch statistics, whole epochs: a smooth curve) against the test accuracy's "
            "epoch-to-epoch noise:",
            "",
            "| configurations | epochs compared | mean training-accuracy gap (first minus second) | "
            "largest training-accuracy gap | test accuracy's median change from one epoch to the next "
            "(first / second) |",
            "|---|---|---|---|---|",
        ]
        for pair, g in shown:
            a, b = pair.split("-")
            moves = " / ".join("-" if noise.get(c) is None else f"{noise[c]:.4f}" for c in (a, b))
            rows.append(f"| {a} vs {b} | {g['epochs']} | {g['mean']:+.4f} | {g['max_abs']:.4f} | {moves} |")
    return rows


def _decomposition_rows(summary: dict[str, Any]) -> list[str]:
    """The table of :data:`DECOMPOSITION`: for each pair stored, the epochs its runs agree to the last bit and the
    largest test-accuracy gap."""
    gaps, same = summary["max_gaps"], summary.get("same_epochs", {})
    rows = []
    for (a, b), what in DECOMPOSITION:
        key = f"{a}-{b}"
        if gaps.get(key) is None:
            continue
        equal = f"{same[key]['same']} of {same[key]['epochs']}" if key in same else "-"
        rows.append(f"| {a} vs {b} | {what} | {equal} | {gaps[key]:.4f} |")
    if not rows:
        return []
    return [
        "",
        "Configurations 2 and 3 differ from Theorem 1's setting in three ways; the full-length controls 2b "
        "(2 with batch norm at lr 0.01) and 3p (2b scaled by 2^-7) take them one at a time. Equal epochs: "
        f"epochs whose {', '.join(EXACT_METRICS)} agree to the last bit (Theorem 1 makes a pair that differs "
        'only in a power-of-two factor agree until something else acts). Limit for "identical": '
        f"{IDENTICAL}.",
        "",
        "| runs | what differs between them | equal epochs | largest test-accuracy gap |",
        "|---|---|---|---|",
        *rows,
    ]
