r"""Experiment 1, the approximation viewpoint (reproducibility report 3.1.1, Table 1).

If latent weights were an approximation of real-valued weights that the binary ones stand for, a network should
still work with its latent weights in place of their signs. The report trains the MNIST BNN with latent weights and
then tests it three ways:

1. **binary**: as trained, forward with :math:`\operatorname{sign}(\theta_r)`;
2. **real**: the weight quantizer swapped for the identity, so the real latent weights :math:`\theta_r` are used
   (activations stay binarized, batch-norm statistics stay those learned with binary weights);
3. **real retrained**: the same real-weight network after retraining only the batch-norm layers (their shift and
   running statistics) for ``retrain_epochs`` more epochs, latent weights frozen.

Published (10 initializations, mean and variance): binary 0.9663 (3.2e-4), real 0.1039 (3.4e-6), real retrained
0.9807 (1.81e-6).

Procedure, as in the report's Larq script: the MNIST BNN (``padding="valid"``, the script's layer shapes), Adam
(lr 1e-3, betas 0.9/0.999) on all parameters, cross-entropy, no validation split, latent weights clipped to [-1, 1]
after every step, batch size 32 (Keras' default: the script passes none). Retraining uses a fresh Adam at the same
learning rate over the batch-norm shifts only. Fashion-MNIST uses the same network; CIFAR-10 uses BinaryNet
(``variant="original"``, ``width``) in latent mode. The seed sets the initialization and the batch order.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from torchbop.experiments.runner import RunContext, RunSpec

__all__ = ["VERSION", "PUBLISHED", "plan", "execute", "describe", "summarize"]

VERSION = 1
EVALUATIONS = ("binary", "real", "real_retrained")
#: The reproducibility report's Table 1 (MNIST): mean and variance over 10 initializations.
PUBLISHED = {"mnist": {"binary": (0.9663, 3.2e-4), "real": (0.1039, 3.4e-6), "real_retrained": (0.9807, 1.81e-6)}}


def _train_config(cfg: Any, dataset: str, seed: int, epochs: int) -> dict[str, Any]:
    from torchbop.training import TrainConfig

    if dataset == "cifar10":
        model, model_kwargs = "binarynet", {"width": cfg.width, "variant": "original"}
    else:
        model, model_kwargs = "mnist_bnn", {"padding": "valid"}
    config = TrainConfig(
        name=f"approximation-{dataset}", model=model, model_kwargs=model_kwargs, mode="latent", dataset=dataset,
        protocol="original", batch_size=cfg.batch_size, epochs=epochs, optimizer="adam", lr=cfg.lr, seed=seed,
        progress_bar=False,  # protocol "original": the test set is evaluated after each epoch, for the curves only
    )
    return {k: v for k, v in config.to_dict().items() if k not in ("out", "data_dir", "progress_bar")}


def datasets(cfg: Any) -> tuple[str, ...]:
    """The datasets this experiment reads (the datasets the profile lists), so that they can be checked or fetched before any run."""
    return tuple(cfg.datasets)


def plan(cfg: Any) -> list[RunSpec]:
    specs = []
    for dataset in cfg.datasets:
        for seed in range(cfg.seeds):
            params = {
                "dataset": dataset, "seed": seed, "subset": cfg.subset, "test_subset": cfg.test_subset,
                "train": _train_config(cfg, dataset, seed, cfg.epochs),
                "retrain": {"epochs": cfg.retrain_epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                            "seed": seed + 10_000, "optimizer": "adam"},
            }
            specs.append(RunSpec("approximation", f"{dataset}-seed{seed}", params))
    return specs


def execute(params: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    from torchbop.experiments.common import (binary_weights, evaluate, freeze_binary_weights, load_data,
                                             set_weight_quantizers, train_run)
    from torchbop.training import TrainConfig
    from torchbop.training.module import build_model

    data = load_data(params["dataset"], ctx.data_dir, params["subset"], params["test_subset"])
    config = TrainConfig.from_dict({**params["train"], "out": str(ctx.run_dir / "train"), "progress_bar": False})
    torch.manual_seed(config.seed)
    model = build_model(config)

    ctx.log(f"training latent weights, {config.epochs} epochs on {len(data['train'][1])} images")
    _, history = train_run(config, data, model, log=ctx.log)
    latent = torch.cat([w.detach().flatten() for w in binary_weights(model)])
    result: dict[str, Any] = {"binary": evaluate(model, data["test"])}

    set_weight_quantizers(model, lambda: None)  # forward with the real latent weights
    result["real"] = evaluate(model, data["test"])

    freeze_binary_weights(model)
    retrain = params["retrain"]
    ctx.log(f"retraining batch norm only, {retrain['epochs']} epochs")
    retrain_history = retrain_batch_norm(model, data["train"], epochs=retrain["epochs"], lr=retrain["lr"],
                                         batch_size=retrain["batch_size"], seed=retrain["seed"], log=ctx.log)
    after = torch.cat([w.detach().flatten() for w in binary_weights(model)])
    if not torch.equal(latent, after):
        raise RuntimeError("the latent weights changed while retraining batch norm only")
    result["real_retrained"] = evaluate(model, data["test"])
    result.update({
        "latent_abs_mean": float(latent.abs().mean()),
        "latent_at_bound": float((latent.abs() >= 1.0).float().mean()),  # fraction clipped to +-1
        "test_images": len(data["test"][1]), "train_images": len(data["train"][1]),
        "history": history["epochs"], "retrain_history": retrain_history,
    })
    return result


def retrain_batch_norm(model: torch.nn.Module, train: tuple[torch.Tensor, torch.Tensor], *, epochs: int, lr: float,
                       batch_size: int, seed: int, log: Any = None) -> list[dict[str, float]]:
    """Train the parameters that still require gradients (batch norm, once the latent weights are frozen) with a
    fresh Adam, in train mode so that the running statistics are re-estimated too; returns per-epoch loss/accuracy.

    A plain loop rather than :func:`torchbop.training.train`: nothing of the engine (validation, checkpoints, flip
    counting, schedules) is needed to fit a few batch-norm shifts, and the loop shows exactly what is trained.
    """
    import torch.nn.functional as F

    from torchbop.data import DeviceLoader

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    loader = DeviceLoader(train[0], train[1], batch_size, shuffle=True, seed=seed, drop_last=True)
    model.train()
    history = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        loss_sum = correct = seen = 0.0
        for x, y in loader:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(y)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen})
        if log is not None:
            log(f"BN retraining epoch {epoch + 1}/{epochs}: train_acc {correct / seen:.4f}")
    return history


def describe(result: dict[str, Any]) -> str:
    return ", ".join(f"{name} {result[name]:.4f}" for name in EVALUATIONS)


def summarize(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Mean and population variance (numpy's ``var``, ddof 0) of each evaluation per dataset, beside the published
    numbers."""
    rows = []
    by_dataset: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_dataset.setdefault(record["params"]["dataset"], []).append(record["result"])
    datasets: dict[str, Any] = {}
    for dataset, results in by_dataset.items():
        entry: dict[str, Any] = {"seeds": len(results)}
        for name in EVALUATIONS:
            values = [r[name] for r in results]
            mean = statistics.fmean(values)
            var = statistics.pvariance(values) if len(values) > 1 else float("nan")
            published = PUBLISHED.get(dataset, {}).get(name)
            entry[name] = {"mean": mean, "var": var, "values": values,
                           "published_mean": published[0] if published else None,
                           "published_var": published[1] if published else None}
            rows.append({"dataset": dataset, "evaluation": name, "mean": mean, "var": var, "seeds": len(values),
                         "published_mean": published[0] if published else None,
                         "published_var": published[1] if published else None})
        entry["latent_at_bound"] = statistics.fmean(r["latent_at_bound"] for r in results)
        datasets[dataset] = entry
    return {"datasets": datasets, "tables": {"table1": rows}}
