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
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
import torch.nn.functional as F

from torchbop.experiments.runner import RunContext, RunSpec

__all__ = ["VERSION", "CONFIGURATIONS", "plan", "execute", "describe", "summarize"]

VERSION = 1

#: name -> (description, init scheme, init scale, optimizer, lr)
CONFIGURATIONS: dict[str, tuple[str, str, float, str, float]] = {
    "1": ("Glorot normal, SGD lr 0.01", "glorot_normal", 1.0, "sgd", 0.01),
    "2": ("Glorot uniform, SGD lr 1", "glorot_uniform", 1.0, "sgd", 1.0),
    "3": ("Glorot uniform x0.01, SGD lr 0.01", "glorot_uniform", 0.01, "sgd", 0.01),
    "4": ("uniform U(-1,1), SGD lr 0.01", "uniform", 1.0, "sgd", 0.01),
    "5": ("uniform U(-1,1), Adam lr 0.01", "uniform", 1.0, "adam", 0.01),
}


def datasets(cfg: Any) -> tuple[str, ...]:
    """The datasets this experiment reads (MNIST), so that they can be checked or fetched before any run."""
    return ("mnist",)


def plan(cfg: Any) -> list[RunSpec]:
    from torchbop.training import TrainConfig

    specs = []
    for name, (_, scheme, scale, optimizer, lr) in CONFIGURATIONS.items():
        for seed in range(cfg.seeds):
            train = TrainConfig(name=f"arbitrary-lr-{name}", model="mnist_bnn", model_kwargs={"padding": "valid"},
                                mode="latent", dataset="mnist", protocol="original", batch_size=cfg.batch_size,
                                epochs=cfg.epochs, optimizer=optimizer, lr=lr, seed=seed, progress_bar=False)
            params = {"kind": "figure", "configuration": name, "scheme": scheme, "scale": scale, "seed": seed,
                      "subset": cfg.subset, "test_subset": cfg.test_subset,
                      "train": {k: v for k, v in train.to_dict().items() if k not in ("out", "data_dir", "progress_bar")}}
            specs.append(RunSpec("arbitrary-lr", f"config{name}-seed{seed}", params))
    common = {"kind": "theorem", "steps": cfg.theorem_steps, "lr": cfg.theorem_lr, "batch_size": cfg.batch_size,
              "subset": cfg.subset, "seed": 0, "scheme": "glorot_uniform"}
    specs.append(RunSpec("arbitrary-lr", "theorem1", {**common, "factor": cfg.theorem_factor,
                                                      "ste_clip": float("inf"), "clip_latent": False}))
    specs.append(RunSpec("arbitrary-lr", "theorem1-control", {**common, "factor": cfg.control_factor,
                                                              "ste_clip": 1.0, "clip_latent": True}))
    return specs


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    if params["kind"] == "theorem":
        from torchbop.experiments.common import load_data

        data = load_data("mnist", ctx.data_dir, params["subset"], None)
        return theorem1_check(data["train"], steps=params["steps"], factor=params["factor"], lr=params["lr"],
                              ste_clip=float(params["ste_clip"]), clip_latent=params["clip_latent"],
                              batch_size=params["batch_size"], seed=params["seed"], scheme=params["scheme"])
    return _figure_run(params, ctx)


def _figure_run(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    from torchbop.experiments.common import binary_weights, load_data, train_run
    from torchbop.nn import init_binary_weights_
    from torchbop.training import TrainConfig
    from torchbop.training.module import build_model

    data = load_data("mnist", ctx.data_dir, params["subset"], params["test_subset"])
    config = TrainConfig.from_dict({**params["train"], "out": str(ctx.run_dir), "progress_bar": False})
    torch.manual_seed(config.seed)
    model = build_model(config)
    init_binary_weights_(model, params["scheme"], scale=params["scale"],
                         generator=torch.Generator().manual_seed(config.seed))
    initial = float(torch.cat([w.detach().abs().flatten() for w in binary_weights(model)]).mean())
    result, history = train_run(config, data, model, log=ctx.log)
    return {"test_acc": result["test_acc"], "initial_latent_abs_mean": initial, "history": history["epochs"]}


def theorem1_check(train: tuple[torch.Tensor, torch.Tensor], *, steps: int, factor: float, lr: float,
                   ste_clip: float = float("inf"), clip_latent: bool = False, batch_size: int = 32, seed: int = 0,
                   scheme: str = "glorot_uniform") -> dict[str, Any]:
    """Train runs A (scale 1) and B (scale ``factor``) in lockstep; count binary weights whose signs differ.

    Returns ``differing_total`` (summed over steps; 0 when the trajectories agree bit for bit), ``differing_max``,
    ``first_difference_step`` (None when none), ``flips_total`` (sign changes in run A: the trajectory is not
    trivially constant), and the per-step ``differing`` and ``flips`` lists.
    """
    from torchbop.data import DeviceLoader
    from torchbop.experiments.common import binary_weights, set_weight_quantizers
    from torchbop.models import MnistBNN
    from torchbop.nn import clip_latent_weights_, init_binary_weights_
    from torchbop.quantizers import SteSign

    def make(scale: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = MnistBNN(mode="latent", padding="valid")
        init_binary_weights_(model, scheme, scale=scale, generator=torch.Generator().manual_seed(seed))
        set_weight_quantizers(model, lambda: SteSign(clip_value=ste_clip))
        binary = binary_weights(model)
        other = [p for p in model.parameters() if all(p is not w for w in binary)]
        # only the latent weights' learning rate is scaled: batch norm trains identically in both runs
        optimizer = torch.optim.SGD([{"params": binary, "lr": lr * scale}, {"params": other, "lr": lr}])
        return model, optimizer

    runs = [make(1.0), make(factor)]
    loader = DeviceLoader(train[0], train[1], batch_size, shuffle=True, seed=seed, drop_last=True)
    signs = lambda m: torch.cat([(w >= 0).flatten() for w in binary_weights(m)])  # noqa: E731
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
    return {"differing_total": sum(differing), "differing_max": max(differing), "first_difference_step": first,
            "flips_total": sum(flips), "steps": steps, "binary_weights": int(previous.numel()), "factor": factor,
            "ste_clip": ste_clip, "clip_latent": clip_latent, "differing": differing, "flips": flips}


def describe(result: dict[str, Any]) -> str:
    if "differing_total" in result:
        return (f"{result['differing_total']} differing binary weights over {result['steps']} steps "
                f"({result['flips_total']} flips in the reference run)")
    return f"test accuracy {result['test_acc']:.4f}"


def summarize(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Per configuration: seed-mean test accuracy per epoch; the largest gaps between the curves the claims
    compare; and the Theorem-1 counts."""
    curves: dict[str, list[list[float]]] = {}
    theorem: dict[str, Any] = {}
    for record in records:
        params, result = record["params"], record["result"]
        if params["kind"] == "theorem":
            name = "control" if params["clip_latent"] else "check"
            theorem[name] = {k: v for k, v in result.items() if k not in ("differing", "flips")}
            continue
        curves.setdefault(params["configuration"], []).append([e.get("val_acc", float("nan"))
                                                               for e in result["history"]])
    mean_curves = {name: [statistics.fmean(v) for v in zip(*runs)] for name, runs in sorted(curves.items())}
    rows = [{"configuration": name, "description": CONFIGURATIONS[name][0], "epoch": i + 1, "test_acc": acc,
             "seeds": len(curves[name])} for name, curve in mean_curves.items() for i, acc in enumerate(curve)]

    def gap(a: str, b: str) -> float | None:
        if a not in mean_curves or b not in mean_curves:
            return None
        return max(abs(x - y) for x, y in zip(mean_curves[a], mean_curves[b]))

    gaps = {f"{a}-{b}": gap(a, b) for a, b in (("2", "3"), ("1", "4"), ("1", "2"), ("1", "3"), ("4", "5"))}
    finals = {name: curve[-1] for name, curve in mean_curves.items() if curve}
    return {"curves": mean_curves, "final_test_acc": finals, "max_gaps": gaps, "theorem1": theorem,
            "tables": {"figure1": rows}}
