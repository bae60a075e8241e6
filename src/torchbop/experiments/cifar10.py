r"""Experiment 4, BinaryNet on CIFAR-10 with Bop (paper 5.2, Figure 3; reproducibility report 3.3).

The full shipped recipe, with its protocol stated beside the result:

* ``protocol="original"``: recipe ``cifar10``, the paper's code: BinaryNet (original variant), batch 50, 500 epochs,
  tau 1e-8, gamma 1e-4 decayed x0.1 every 100 epochs, Adam(0.01) for the batch-norm shifts, pad-4 crop and flip.
  Trains on all 50k training images, validates on the test set and reports the test accuracy of the final weights.
  Published: 91.3%.
* ``protocol="reproduction"``: recipe ``cifar10_reproduction``, the reproducibility report's run: its BinaryNet
  variant, a seeded class-balanced 45k/5k split, Adam(1e-3), early stopping once no weight flipped for 10 epochs,
  and the test accuracy of the lowest-validation-loss checkpoint. Published: 88.67%.

``epochs``, ``width``, ``subset`` and ``gamma_decay_every`` scale the run down; the decay keeps its x0.1 factor.
Recorded per epoch: training and validation accuracy, flips and the flip ratio (mean fraction of binary weights
flipped per step), and gamma.
"""

from __future__ import annotations

from typing import Any

from torchbop.experiments.runner import RunContext, RunSpec

__all__ = ["VERSION", "PUBLISHED", "RECIPES", "plan", "execute", "describe", "summarize"]

VERSION = 1
KEEP_RUN_DIR = True  # the checkpoints of a CIFAR-10 run are worth keeping
RECIPES = {"original": "cifar10", "reproduction": "cifar10_reproduction"}
#: Published test accuracy by protocol.
PUBLISHED = {"original": 0.913, "reproduction": 0.8867}


def datasets(cfg: Any) -> tuple[str, ...]:
    """The datasets this experiment reads (CIFAR-10), so that they can be checked or fetched before any run."""
    return ("cifar10",)


def plan(cfg: Any) -> list[RunSpec]:
    from torchbop.training import load_recipe

    if cfg.protocol not in RECIPES:
        raise ValueError(f"Invalid protocol: {cfg.protocol!r} (expected one of {', '.join(RECIPES)})")
    specs = []
    for seed in range(cfg.seeds):
        recipe = load_recipe(RECIPES[cfg.protocol])
        changes: dict[str, Any] = {"epochs": cfg.epochs, "seed": seed, "progress_bar": False,
                                   "model_kwargs": {**recipe.model_kwargs, "width": cfg.width}}
        if cfg.gamma_decay_every is not None:
            changes["gamma_decay_every"] = cfg.gamma_decay_every
        train = recipe.replace(**changes)
        params = {"protocol": cfg.protocol, "seed": seed, "subset": cfg.subset, "test_subset": cfg.test_subset,
                  "train": {k: v for k, v in train.to_dict().items() if k not in ("out", "data_dir", "progress_bar")}}
        specs.append(RunSpec("cifar10", f"{cfg.protocol}-seed{seed}", params))
    return specs


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    from torchbop.experiments.common import train_cifar10_run

    result, history, data = train_cifar10_run(params, ctx)
    return {**result, "history": history["epochs"], "train_images": len(data["train"][1]),
            "test_images": len(data["test"][1])}


def describe(result: dict[str, Any]) -> str:
    return (f"test accuracy {result['test_acc']:.4f} (protocol {result['protocol']}, {result['test_weights']} "
            f"weights, {result['epochs']} epochs)")


def summarize(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Test accuracy per seed with its protocol, and the mean flip ratio of the first and last gamma phases."""
    rows = []
    for record in records:
        result, train = record["result"], record["params"]["train"]
        phases = _phases(result["history"])
        rows.append({"seed": record["params"]["seed"], "protocol": result["protocol"],
                     "test_weights": result["test_weights"], "test_acc": result["test_acc"],
                     "published": PUBLISHED[result["protocol"]], "epochs": result["epochs"],
                     "stopped_early": result["stopped_early"], "train_images": result["train_images"],
                     "test_images": result["test_images"], "width": train["model_kwargs"].get("width", 1.0),
                     "gamma_phases": len(phases),
                     "flip_ratio_first_phase": phases[0] if len(phases) > 1 else None,
                     "flip_ratio_last_phase": phases[-1] if len(phases) > 1 else None})
    return {"tables": {"figure3": rows}}


def _phases(history: list[dict[str, Any]]) -> list[float]:
    """Mean flip ratio of each run of consecutive epochs with the same gamma."""
    phases: list[list[float]] = []
    previous = None
    for row in history:
        if row["rate"] != previous:
            phases.append([])
            previous = row["rate"]
        phases[-1].append(row.get("flip_ratio", float("nan")))
    return [sum(p) / len(p) for p in phases]
