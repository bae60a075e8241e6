"""Batch-norm recalibration (TrainConfig.recalibrate_bn): the statistics it computes, against a direct computation;
what a run reports; that training follows the same path; and a killed run with it resumes bit for bit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from tests.training.test_resume import RUN_STATE, Kill, assert_same
from torchbop.data.loader import scale_images
from torchbop.experiments.common import evaluate
from torchbop.nn import ShiftBatchNorm1d, ShiftBatchNorm2d
from torchbop.training import Observer, train
from torchbop.training.data import recalibrate_batch_norm


class Keep(Observer):
    """Keeps the run (its model is the one tested, after train() returns)."""

    module = None

    def on_train_end(self, run):
        self.module = run


def batch_norm_inputs_statistics(model: nn.Module, images: torch.Tensor, batch_size: int) -> dict[str, tuple]:
    """Directly: per batch norm, the mean over the training batches (dataset order, full batches) of the batch's
    channel means and unbiased variances of that batch norm's input, the model in training mode."""
    model = copy.deepcopy(model).train()
    seen: dict[str, list] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):

            def hook(mod, inputs, _output, name=name):
                x = inputs[0].double()
                dims = [0] + list(range(2, x.dim()))
                seen.setdefault(name, []).append((x.mean(dims), x.var(dims, unbiased=True)))

            hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for start in range(0, len(images) - batch_size + 1, batch_size):
            model(scale_images(images[start : start + batch_size]))
    for h in hooks:
        h.remove()
    return {
        name: (torch.stack([m for m, _ in stats]).mean(0), torch.stack([v for _, v in stats]).mean(0))
        for name, stats in seen.items()
    }


class TestFunction:
    def make(self):
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 3, 3), ShiftBatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), ShiftBatchNorm1d(5)
        ).eval()

    def test_statistics_are_the_mean_of_the_batch_statistics(self):
        model = self.make()
        images = torch.randint(0, 256, (43, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        weights = {k: v.clone() for k, v in model.named_parameters()}
        rng = torch.get_rng_state()
        seconds = recalibrate_batch_norm(model, images, torch.zeros(43, dtype=torch.long), batch_size=8)
        expected = batch_norm_inputs_statistics(model, images, 8)  # 5 full batches; the last 3 images dropped
        for name in ("1", "4"):
            bn = model.get_submodule(name)
            torch.testing.assert_close(bn.running_mean, expected[name][0].float(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(bn.running_var, expected[name][1].float(), rtol=1e-5, atol=1e-6)
            assert int(bn.num_batches_tracked) == 5 and bn.momentum == 0.01  # the momentum is restored
        assert not model.training and seconds >= 0.0
        assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
        assert torch.equal(torch.get_rng_state(), rng)

    def test_deterministic(self):
        a, b = self.make(), self.make()
        images = torch.randint(0, 256, (32, 1, 6, 6), dtype=torch.uint8)
        for model in (a, b):
            recalibrate_batch_norm(model, images, torch.zeros(32, dtype=torch.long), batch_size=8)
        assert_same(a.state_dict(), b.state_dict())

    def test_arguments(self):
        images = torch.zeros(8, 1, 6, 6, dtype=torch.uint8)
        with pytest.raises(ValueError, match="Invalid batch_size value: 0"):
            recalibrate_batch_norm(self.make(), images, torch.zeros(8, dtype=torch.long), batch_size=0)


class TestInARun:
    def test_end_recalibrates_the_tested_weights_and_reports_it(self, tiny_config, synthetic, tmp_path):
        keep_off, keep_end = Keep(), Keep()
        off = train(tiny_config(out=str(tmp_path / "off")), data=synthetic, loggers=False, observers=[keep_off])
        end = train(
            tiny_config(out=str(tmp_path / "end"), recalibrate_bn="end"),
            data=synthetic,
            loggers=False,
            observers=[keep_end],
        )
        model = keep_end.module.model
        # training followed the same path: the same weights; only the running statistics differ
        params_off = dict(keep_off.module.model.named_parameters())
        assert all(torch.equal(p, params_off[k]) for k, p in model.named_parameters())
        expected = batch_norm_inputs_statistics(model, synthetic["train"][0].unsqueeze(1), batch_size=32)
        assert expected
        for name, (mean, var) in expected.items():
            bn = model.get_submodule(name)
            torch.testing.assert_close(bn.running_mean, mean.float(), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(bn.running_var, var.float(), rtol=1e-4, atol=1e-5)
            assert not torch.allclose(keep_off.module.model.get_submodule(name).running_var, bn.running_var)
        test = (synthetic["test"][0].unsqueeze(1), synthetic["test"][1])
        assert end["test_acc"] == pytest.approx(evaluate(model, test), abs=1e-6)  # tested with these statistics
        assert end["val_acc"] == off["val_acc"]  # "end" leaves validation alone
        assert end["recalibrate_bn"] == "end" and end["bn_recalibrations"] == 1 and end["bn_recalibration_s"] > 0
        summary = json.loads((tmp_path / "end" / "summary.json").read_text())
        assert summary["bn_recalibrations"] == 1 and summary["bn_recalibration_s"] == end["bn_recalibration_s"]
        assert "bn_recalibration_s" not in off  # off: nothing new in the summary

    def test_eval_recalibrates_before_every_validation(self, tiny_config, synthetic, tmp_path, capsys):
        end = train(tiny_config(out=str(tmp_path / "end"), recalibrate_bn="end"), data=synthetic, loggers=False)
        capsys.readouterr()
        ev = train(tiny_config(out=str(tmp_path / "eval"), recalibrate_bn="eval"), data=synthetic)
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
        assert len(lines) == 2 and all("(batch norm recalibration " in line for line in lines)
        # one per validation; the test reuses the last one (the same weights)
        assert ev["bn_recalibrations"] == 2 and ev["bn_recalibration_s"] > 0
        assert ev["test_acc"] == end["test_acc"] and ev["val_acc"] == ev["test_acc"]  # validated on the test set
        header = next((tmp_path / "eval" / "csv").glob("version_*/metrics.csv")).read_text().splitlines()[0]
        assert "bn_recalibration_s" in header.split(",")


class Spy(Observer):
    """Counts the validations of the run (to check that the resumed run did some)."""

    def __init__(self) -> None:
        self.validations = 0

    def on_epoch_end(self, run, metrics):
        self.validations += "val_loss" in metrics


@pytest.mark.parametrize("every_n_steps", [None, 3], ids=["epoch-checkpoints", "mid-epoch-checkpoints"])
def test_resume_with_recalibration_equals_uninterrupted(tiny_config, synthetic, tmp_path, every_n_steps):
    """recalibrate_bn "eval" (with Bop2ndOrder under the per-step "interpolate" schedule): a run killed in epoch 1
    and resumed ends bit for bit where the uninterrupted run ends, running statistics and checkpoints included."""
    common = dict(
        epochs=3,
        recalibrate_bn="eval",
        checkpoint_every_n_steps=every_n_steps,
        optimizer="bop2nd",
        decay_schedule="interpolate",
        gamma=1e-2,
        gamma_end=1e-4,
        threshold=1e-5,
        threshold_end=1e-7,
        sigma=1e-3,
        sigma_end=1e-2,
        lr_end=1e-3,
    )
    full = train(tiny_config(out=str(tmp_path / "full"), **common), data=synthetic, loggers=False)
    killed = tiny_config(out=str(tmp_path / "killed"), **common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(killed, data=synthetic, loggers=False, observers=[Kill(epoch=1, batch=6)])
    spy = Spy()
    resumed = train(killed.replace(resume=str(tmp_path / "killed")), data=synthetic, loggers=False, observers=[spy])
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 24
    assert_same(a["model"], b["model"], "model")  # the recalibrated running statistics included
    assert_same(a["optimizer"], b["optimizer"], "optimizer")  # interpolated rates in the groups
    assert_same({k: a[k] for k in RUN_STATE}, {k: b[k] for k in RUN_STATE}, "run state")
    assert resumed["test_acc"] == full["test_acc"] and resumed["val_loss"] == full["val_loss"]
    assert spy.validations == 2 and resumed["bn_recalibrations"] == 2  # epochs 1 and 2 validated after the resume
    bop_groups = a["optimizer"]["param_groups"]  # torch's shape: the composite's groups, Bop's first
    assert bop_groups[0]["sigma"] == pytest.approx(1e-2)  # after the last step: the rate of step 24 = T, the end
