"""``compile: true`` (the GPU path of issue 8, item 7) on CPU: the compiled training step gives the eager step's
results, a non-finite gradient still stops the run, and no training step reads a device value on the host.

Tolerance of the compiled step. ``torch.compile`` with its default backend (inductor) generates new kernels for the
same function; it fuses operations and reorders floating-point sums, so losses, gradients and batch-norm statistics
differ from eager in the last bits (measured on the MNIST BNN: gradients within 4e-6 of their tensor's largest
entry, the loss within 1 ulp). The tests hold it to:

* loss and accuracy of the step: relative 1e-5;
* gradients, through what the step leaves: Adam's first moment (``(1 - beta1) * g`` after one step) and Bop's ``m``
  (``gamma * g``): within ``1e-4`` of the tensor's largest entry, 25x the measured difference;
* Bop's flips: a weight flips when ``w * m > tau``, a comparison that a difference ``d`` in ``m`` can only turn where
  ``|w * m - tau| <= d``. So the binary weights must be equal everywhere but at those entries (their count is
  reported, and must stay a tiny fraction), and every other parameter within the same relative bound.

Over many steps such differences compound (a different flip changes every later gradient), so the two runs are
compared after one step, not after an epoch. The plumbing of the compiled path (the compile wrapper, Bop with
``nonfinite="mask"``, the deferred check, the logging) is compared bit for bit over whole runs with the ``eager``
backend of ``torch.compile``, which captures the same graph with TorchDynamo and runs it with eager kernels.
One CPU-only detail has to be aligned for that: eagerly on CPU, the straight-through estimator's backward skips its
NaN masking after a summing pass that proves there is no NaN (``torchbop.quantizers._zero_where_nan``), while traced
(and on every other device) it always masks; the masked gradient is a new tensor whose memory layout differs, so the
convolution and batch-norm backward kernels that follow round differently (by about 1e-7). The fixture makes eager
take the masking path too, as it does on a GPU.
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from torch import nn

import torchbop.training.loop as loop
from torchbop.nn import BinaryConv2d, BinaryLinear, ShiftBatchNorm1d, ShiftBatchNorm2d
from torchbop.training import Observer, train
from torchbop.training.run_logs import read_metrics


def last_checkpoint(result: dict) -> dict:
    return torch.load(result["last_checkpoint"], weights_only=True)


def split_optimizer(state: dict) -> list[dict]:
    """(Bop's, Adam's) ``{"state", "param_groups"}`` out of the composite's torch-shaped state_dict (its parameters
    numbered across the children; Bop's groups are those with a threshold)."""
    parts = []
    for bop in (True, False):
        groups = [g for g in state["param_groups"] if ("threshold" in g) == bop]
        ids = [i for g in groups for i in g["params"]]
        parts.append({"param_groups": groups, "state": {i: state["state"][i] for i in ids if i in state["state"]}})
    return parts


def assert_equal_tree(a, b, path: str = "") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            assert_equal_tree(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tree(x, y, f"{path}/{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    else:
        assert a == b, path


@pytest.fixture
def dynamo_eager(monkeypatch):
    """Compile with the ``eager`` backend (the captured graph, run by eager kernels: seconds, bit-identical), with
    the straight-through estimator's backward taking its traced path in eager runs too (see the module docstring)."""
    import torchbop.quantizers

    monkeypatch.setattr(loop, "COMPILE_OPTIONS", {"backend": "eager"})
    monkeypatch.setattr(torchbop.quantizers, "_is_compiling", lambda: True)


def test_compiled_run_is_bit_identical_with_the_eager_backend(tiny_config, synthetic, tmp_path, dynamo_eager):
    # log_every_n_steps=3: the compiled path logs its step metrics at the logged steps only; the tables still match
    common = dict(epochs=2, log_every_n_steps=3)
    eager = train(tiny_config(out=str(tmp_path / "eager"), **common), data=synthetic)
    compiled = train(tiny_config(out=str(tmp_path / "compiled"), compile=True, **common), data=synthetic)
    a, b = last_checkpoint(eager), last_checkpoint(compiled)
    assert_equal_tree(a["model"], b["model"], "model")
    bop_a, adam_a = split_optimizer(a["optimizer"])
    bop_b, adam_b = split_optimizer(b["optimizer"])
    assert [g["nonfinite"] for g in bop_b["param_groups"]] == ["mask"]  # the compiled path's Bop
    assert_equal_tree(adam_a["state"], adam_b["state"], "adam")
    for key in ("exp_avg", "flips", "step"):  # Bop's m, its last flip count and step
        assert_equal_tree(
            {i: s[key] for i, s in bop_a["state"].items()}, {i: s[key] for i, s in bop_b["state"].items()}, f"bop/{key}"
        )
    assert compiled["test_acc"] == eager["test_acc"]
    # the logs: same rows, same values (flip metrics at the logged steps, epoch metrics)
    tables = [read_metrics(next((tmp_path / run / "csv").glob("*/metrics.csv"))) for run in ("eager", "compiled")]
    assert tables[0] == tables[1]
    steps = [int(row["step"]) for row in tables[1] if "train_loss_step" in row]
    assert steps == [2, 5, 8, 11, 14] and steps == [int(row["step"]) for row in tables[1] if "pi_t" in row]


def one_step_model() -> nn.Module:
    torch.manual_seed(0)
    # small: inductor's compilation is most of this test's time. Average pooling, not max pooling: with +-1 weights on
    # images of few grey levels, 4% of 4x4 windows hold a tied maximum, and which entry gets its gradient is the
    # kernel's choice (eager and inductor choose differently on AVX-512 CPUs: Bop's m then differs by 2%)
    return nn.Sequential(
        BinaryConv2d(1, 8, 3, padding=1, input_quantizer=None),
        nn.AvgPool2d(4),
        ShiftBatchNorm2d(8),
        nn.Flatten(),
        BinaryLinear(8 * 7 * 7, 10),
        ShiftBatchNorm1d(10),
    )


class StepLoss(Observer):
    def __init__(self) -> None:
        self.values: list[tuple[float, float]] = []

    def on_batch_end(self, run):
        logged = run.step_metrics  # every step's values, whatever is logged
        self.values.append((float(logged["train_loss_step"]), float(logged["train_acc_step"])))


@pytest.mark.slow
def test_compiled_step_matches_eager_within_tolerance(tiny_config, synthetic, tmp_path):
    """One training step, eager against inductor (about 20 s of compilation on a 2-core CPU); see the module
    docstring for the tolerances and why they hold."""
    runs = {}
    for compile_ in (False, True):
        losses = StepLoss()
        config = tiny_config(
            out=str(tmp_path / str(compile_)),
            epochs=1,
            limit_train_batches=1,
            limit_eval_batches=0,
            compile=compile_,
            gamma=0.5,
            threshold=1e-4,
        )
        result = train(config, data=synthetic, model=one_step_model(), observers=[losses], loggers=False)
        runs[compile_] = (last_checkpoint(result), losses.values)
    (a, loss_a), (b, loss_b) = runs[False], runs[True]
    assert len(loss_a) == len(loss_b) == 1
    assert loss_b[0] == pytest.approx(loss_a[0], rel=1e-5)

    bop_a, adam_a = split_optimizer(a["optimizer"])
    bop_b, adam_b = split_optimizer(b["optimizer"])

    def close(x: torch.Tensor, y: torch.Tensor, what: str) -> torch.Tensor:
        bound = 1e-4 * float(x.abs().max()) + 1e-12
        assert float((x - y).abs().max()) <= bound, what
        return torch.full_like(x, bound)

    for i, state in adam_a["state"].items():
        close(state["exp_avg"], adam_b["state"][i]["exp_avg"], f"adam exp_avg {i}")
    initial = dict(one_step_model().named_parameters())  # the weights before the step (seeded)
    names = [n for n, p in initial.items() if n.endswith("weight") and p.dim() > 1]  # the binary weights
    tau = bop_a["param_groups"][0]["threshold"]
    undecided = 0
    for index, name in zip(bop_a["param_groups"][0]["params"], names):
        m_a, m_b = bop_a["state"][index]["exp_avg"], bop_b["state"][index]["exp_avg"]
        bound = close(m_a, m_b, f"bop m {name}")
        w_a, w_b = a["model"][name], b["model"][name]
        may_differ = (initial[name].detach() * m_a - tau).abs() <= bound  # a flip that d in m can turn
        undecided += int(may_differ.sum())
        assert torch.equal(w_a[~may_differ], w_b[~may_differ]), name
        assert not torch.equal(w_a, initial[name].detach()), name  # the step flipped something
    total = sum(a["model"][n].numel() for n in names)
    assert undecided <= total // 1000, f"{undecided} of {total} flips too close to call"
    for key, value in a["model"].items():
        if value.dtype.is_floating_point and key not in names:
            close(value, b["model"][key], key)


class NaNGradient(Observer):
    """Puts a NaN into the first binary weight's gradient at global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_step(self, run):
        if run.step == self.step:
            weight = next(p for p in run.model.parameters() if p.dim() > 1)
            weight.grad[(0,) * weight.dim()] = float("nan")


def test_nonfinite_gradient_stops_the_compiled_run(tiny_config, synthetic, tmp_path, dynamo_eager):
    config = tiny_config(epochs=2, compile=True, log_every_n_steps=4)
    with pytest.raises(
        RuntimeError,
        match=r"non-finite gradients .* in 1 binary-weight entries, in one of the "
        r"optimizer steps 1 to 4 ",
    ):
        train(config, data=synthetic, observers=[NaNGradient(step=1)], loggers=False)
    assert not (Path(config.out) / "checkpoints" / "last.ckpt").exists()


def test_nonfinite_gradient_is_caught_before_a_checkpoint(tiny_config, synthetic, tmp_path, dynamo_eager):
    # logged steps every 50: the epoch-end checkpoint (after step 8) is where it is caught
    config = tiny_config(epochs=2, compile=True, log_every_n_steps=50, checkpoint_every_n_steps=6)
    with pytest.raises(RuntimeError, match="non-finite gradients"):
        train(config, data=synthetic, observers=[NaNGradient(step=2)], loggers=False)
    assert not (Path(config.out) / "checkpoints" / "last.ckpt").exists()


# ----------------------------------------------------------------------------------------------------------------
# host syncs
# ----------------------------------------------------------------------------------------------------------------
_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")
_OURS = ("torchbop/training/", "torchbop/metrics.py", "lightning/")


class HostReads:
    """Records every Python-level read of a tensor's value on the host (``.item()``, ``bool()``, ``int()``,
    ``float()``, ``tolist()``, ``nonzero()``) with the innermost torchbop or Lightning frame that made it.

    On a GPU each of these is a device sync; on CPU nothing syncs, so this is how a CPU test sees them. The tensor
    methods are replaced only while :meth:`start`-ed (within the window of steps, after the first step's
    compilations: compiled code must not trace the wrappers). Reads of tensors marked ``_host_resident`` (the
    optimizers' step counters, which stay on the host in a GPU run too) are not counted. Reads made inside aten
    operators (C++) are not seen; Python code (this library, Lightning) makes its reads in Python.
    """

    def __init__(self) -> None:
        self.reads: collections.Counter = collections.Counter()
        self.on = False

    def start(self) -> None:
        if self.on:
            return
        self.on = True
        for name in _READS:
            original = getattr(torch._C.TensorBase, name)

            def wrapper(tensor, *args, _original=original, _name=name, **kwargs):
                if not getattr(tensor, "_host_resident", False):
                    self.reads[f"{self.where()} ({_name})"] += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, wrapper)

    def stop(self) -> None:
        if self.on:
            for name in _READS:
                delattr(torch.Tensor, name)
            self.on = False

    @staticmethod
    def where() -> str:
        for frame in reversed(traceback.extract_stack()[:-2]):
            path = frame.filename.replace("\\", "/")
            if "/torchbop/" in path or "/lightning/" in path:
                return f"{path.split('site-packages/')[-1].split('src/')[-1]}:{frame.lineno} {frame.name}"
        return "?"


class Window(Observer):
    """Counts host reads from the second training step to the one before the epoch's last (none of them logged)."""

    def __init__(self, reads: HostReads) -> None:
        self.reads = reads

    def on_batch_start(self, run, batch):
        if 1 <= run.batch < run.batches - 1:
            for optimizer in getattr(run.optimizer, "optimizers", [run.optimizer]):
                for state in optimizer.state.values():
                    if isinstance(state.get("step"), torch.Tensor) and state["step"].device.type == "cpu":
                        state["step"]._host_resident = True
            self.reads.start()
        else:
            self.reads.stop()

    def on_epoch_end(self, run, metrics):
        self.reads.stop()


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_no_host_read_per_step_in_module_or_lightning(tiny_config, synthetic, dynamo_eager, compile_):
    reads = HostReads()
    try:
        train(
            tiny_config(epochs=1, compile=compile_, log_every_n_steps=50),
            data=synthetic,
            loggers=False,
            observers=[Window(reads)],
        )
    finally:
        reads.stop()
    ours = {where: n for where, n in reads.reads.items() if any(p in where for p in _OURS)}
    assert not ours, f"host reads per training step: {ours}"
