"""train(config) end to end on a tiny synthetic dataset: Bop, Bop2ndOrder and latent modes, the gamma schedule,
early stopping on flips, bf16 autocast, the reproduction protocol and the data module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from torchbop.nn import named_binary_parameters
from torchbop.optim import Bop, CompositeOptimizer
from torchbop.training import History, Observer, train
from torchbop.training.data import make_splits


class Recorder(Observer):
    """Keeps what the tests look at: the group rates at each epoch start and the flips of each epoch."""

    def __init__(self) -> None:
        self.rates: list[list[float]] = []
        self.epoch_flips: list[int] = []
        self.module = None
        self.optimizer = None

    def on_epoch_start(self, run):
        self.rates.append([group["lr"] for group in run.optimizer.param_groups])

    def on_epoch_end(self, run, metrics):
        self.epoch_flips.append(int(run.counter.epoch_total))

    def on_train_end(self, run):
        self.module, self.optimizer = run, run.optimizer


class TestSmoke:
    def test_bop(self, tiny_config, synthetic, tmp_path):
        rec = Recorder()
        result = train(tiny_config(epochs=3), data=synthetic, observers=[rec])
        model, optimizer = rec.module.model, rec.optimizer
        assert isinstance(optimizer, CompositeOptimizer) and isinstance(optimizer.optimizers[0], Bop)
        for _, w in named_binary_parameters(model):  # Bop keeps the weights binary
            assert w.dtype == torch.float32 and bool(((w == 1) | (w == -1)).all())
        assert result["global_step"] == 3 * (256 // 32) and result["epochs"] == 3
        assert all(n > 0 for n in rec.epoch_flips)
        assert result["test_acc"] > 0.3  # chance is 0.1; the bars are easy to learn
        assert result["protocol"] == "original" and result["test_weights"] == "last"
        assert result["data"] == "mnist: train 256, validation 128 (test set), test 128; protocol original"
        assert result["train_images"] == 3 * 256 and result["train_images_per_s"] > 0
        run = tmp_path / "run"
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
        assert json.loads((run / "summary.json").read_text())["test_acc"] == result["test_acc"]
        assert (run / "config.yaml").is_file()
        csv_text = next((run / "csv").glob("version_*/metrics.csv")).read_text()
        header = csv_text.splitlines()[0].split(",")
        for column in ("pi_t", "flips", "epoch_flips", "gamma", "threshold", "train_loss_step", "val_acc", "test_acc"):
            assert column in header, column
        assert any(c.startswith("flips/") for c in header) and any(c.startswith("epoch_flips/") for c in header)

    def test_bop2nd(self, tiny_config, synthetic):
        rec = Recorder()
        result = train(
            tiny_config(optimizer="bop2nd", gamma=1e-2, threshold=1e-6, epochs=1),
            data=synthetic,
            observers=[rec],
            loggers=False,
        )
        assert type(rec.optimizer.optimizers[0]).__name__ == "Bop2ndOrder"
        assert rec.epoch_flips[0] > 0 and result["global_step"] == 8

    @pytest.mark.parametrize("optimizer", ["adam", "sgd"])
    def test_latent(self, tiny_config, synthetic, optimizer):
        rec, history = Recorder(), History()
        lr = 0.01 if optimizer == "adam" else 1.0
        result = train(
            tiny_config(mode="latent", optimizer=optimizer, lr=lr, epochs=2),
            data=synthetic,
            observers=[rec, history],
            loggers=False,
        )
        latent = [w for _, w in named_binary_parameters(rec.module.model)]
        assert all(float(w.abs().max()) <= 1.0 for w in latent)  # clipped after every step
        at_clip = sum(int((w.abs() == 1).sum()) for w in latent) / sum(w.numel() for w in latent)
        assert history.epochs[-1]["latent_at_clip"] == at_clip
        assert any(bool(((w != 1) & (w != -1)).any()) for w in latent)  # real-valued, not binary
        assert type(rec.optimizer).__name__ == {"adam": "Adam", "sgd": "SGD"}[optimizer]
        assert all(n > 0 for n in rec.epoch_flips)  # sign changes of the latent weights are counted
        assert result["global_step"] == 16

    def test_custom_model_and_limits(self, tiny_config, synthetic):
        from torchbop.models import MnistBNN

        model = MnistBNN(mode="bop")
        rec = Recorder()
        result = train(
            tiny_config(epochs=1, limit_train_batches=3, limit_eval_batches=1),
            data=synthetic,
            model=model,
            observers=[rec],
            loggers=False,
        )
        assert rec.module.model is model and result["global_step"] == 3


def test_gamma_schedule(tiny_config, synthetic):
    """gamma decays x0.1 every 2 epochs (the per-epoch staircase of the original recipe); Adam's lr stays."""
    rec = Recorder()
    train(
        tiny_config(
            epochs=5, gamma=1e-2, gamma_decay=0.1, gamma_decay_every=2, limit_train_batches=2, limit_eval_batches=1
        ),
        data=synthetic,
        observers=[rec],
        loggers=False,
    )
    bop_lr = [r[0] for r in rec.rates]
    adam_lr = [r[-1] for r in rec.rates]
    assert bop_lr == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3, 1e-4], rel=1e-12)
    assert adam_lr == [0.01] * 5
    assert rec.optimizer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-4)


def test_linear_schedule(tiny_config, synthetic):
    """decay_schedule 'linear' (AdamBNN's): the latent-mode lr of every group falls by lr / epochs each epoch."""
    rec = Recorder()
    train(
        tiny_config(
            mode="latent",
            optimizer="adam",
            lr=0.004,
            epochs=4,
            decay_schedule="linear",
            limit_train_batches=1,
            limit_eval_batches=1,
        ),
        data=synthetic,
        observers=[rec],
        loggers=False,
    )
    assert [r[0] for r in rec.rates] == pytest.approx([0.004, 0.003, 0.002, 0.001], rel=1e-12)


def test_early_stopping_on_flips(tiny_config, synthetic):
    """A gamma so small that m never crosses tau: nothing flips, and training stops after the patience."""
    rec = Recorder()
    result = train(
        tiny_config(
            epochs=20,
            gamma=1e-12,
            threshold=1e-6,
            early_stop_flip_epochs=3,
            limit_train_batches=2,
            limit_eval_batches=1,
        ),
        data=synthetic,
        observers=[rec],
        loggers=False,
    )
    assert rec.epoch_flips == [0, 0, 0]
    assert result["epochs"] == 3 and result["stopped_early"] is True


def test_flipping_run_does_not_stop_early(tiny_config, synthetic):
    result = train(
        tiny_config(epochs=3, early_stop_flip_epochs=1, limit_train_batches=2, limit_eval_batches=1),
        data=synthetic,
        loggers=False,
    )
    assert result["epochs"] == 3 and result["stopped_early"] is False


def test_bf16_autocast_keeps_fp32_params_and_state(tiny_config, synthetic):
    seen: list[torch.dtype] = []
    rec = Recorder()
    from torchbop.models import MnistBNN

    model = MnistBNN()
    model.features[3].register_forward_hook(lambda m, i, o: seen.append(o.dtype) if m.training else None)
    train(
        tiny_config(epochs=1, precision="bf16-mixed", limit_train_batches=2, limit_eval_batches=1),
        data=synthetic,
        model=model,
        observers=[rec],
        loggers=False,
    )
    assert seen and set(seen) == {torch.bfloat16}  # the convolutions ran under autocast
    assert all(p.dtype == torch.float32 for p in rec.module.model.parameters())
    for state in rec.optimizer.optimizers[0].state.values():
        assert state["exp_avg"].dtype == torch.float32
    for state in rec.optimizer.optimizers[1].state.values():
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32


def test_reproduction_protocol_tests_best_checkpoint(tiny_config, synthetic):
    cfg = tiny_config(protocol="reproduction", test_weights="best", epochs=2, limit_train_batches=2)
    result = train(cfg, data=synthetic, loggers=False)
    assert result["protocol"] == "reproduction" and result["test_weights"] == "best"
    assert "train 229, validation 27 (held-out 10%), test 128" in result["data"]  # per-class rounding
    assert result["best_checkpoint"].endswith("best.ckpt")
    best = torch.load(result["best_checkpoint"], weights_only=True)
    assert best["best_val_loss"] == pytest.approx(result["best_val_loss"])


class TestDataModule:
    def test_reproduction_split_is_class_balanced_and_held_out(self, tiny_config, synthetic):
        dm = make_splits(tiny_config(protocol="reproduction", val_fraction=0.25), data=synthetic)
        (xt, yt), (xv, yv), (_xs, ys) = dm.train, dm.val, dm.test
        assert len(yt) + len(yv) == 256 and abs(len(yv) - 64) <= 10
        assert xt.shape[1:] == (1, 28, 28)
        assert ys is synthetic["test"][1] or torch.equal(ys, synthetic["test"][1])
        total = torch.bincount(synthetic["train"][1], minlength=10).float()
        assert torch.allclose(torch.bincount(yv, minlength=10).float(), total * 0.25, atol=1.0)
        # no validation image is a training image
        seen = {bytes(x.numpy().tobytes()) for x in xt}
        assert not any(bytes(x.numpy().tobytes()) in seen for x in xv)

    def test_original_protocol_validates_on_test_and_subset(self, tiny_config, synthetic):
        dm = make_splits(tiny_config(subset=100), data=synthetic)
        assert len(dm.train[1]) == 100
        assert torch.equal(dm.val[1], synthetic["test"][1])
        again = make_splits(tiny_config(subset=100), data=synthetic)
        assert torch.equal(again.train[1], dm.train[1])  # the subset is seeded

    def test_missing_files(self, tiny_config, tmp_path):
        from torchbop.data import DatasetNotFoundError

        with pytest.raises(DatasetNotFoundError):
            make_splits(tiny_config(data_dir=str(tmp_path / "missing")))


def test_latent_with_frozen_binary_weights(tiny_config, synthetic):
    """Only batch norm trains (the approximation experiment's retraining): weights stay, nothing flips, and the
    optimizer state stays checkpointable (no state is created for the frozen weights)."""
    from torchbop.models import MnistBNN

    model = MnistBNN(mode="latent")
    frozen = {name: w.detach().clone() for name, w in named_binary_parameters(model)}
    for _, w in named_binary_parameters(model):
        w.requires_grad_(False)
    rec = Recorder()
    result = train(
        tiny_config(mode="latent", optimizer="adam", epochs=1, limit_train_batches=3),
        data=synthetic,
        model=model,
        observers=[rec],
        loggers=False,
    )
    for name, w in named_binary_parameters(rec.module.model):
        assert torch.equal(w, frozen[name])
    assert rec.epoch_flips == [0] and result["last_checkpoint"] is not None
    assert len(rec.optimizer.state) == len([p for p in model.parameters() if p.requires_grad])


def test_latent_other_lr_trains_batch_norm_at_its_own_rate(tiny_config, synthetic):
    """other_lr: the latent weights at lr, every other parameter at other_lr (0 here: batch norm stays where it
    started while the latent weights move)."""
    from torchbop.models import MnistBNN

    model = MnistBNN(mode="latent")
    latent_ids = {id(w) for _, w in named_binary_parameters(model)}
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    rec = Recorder()
    train(
        tiny_config(mode="latent", optimizer="sgd", lr=1.0, other_lr=0.0, epochs=1, limit_train_batches=3),
        data=synthetic,
        model=model,
        observers=[rec],
        loggers=False,
    )
    assert rec.rates == [[1.0, 0.0]]
    groups = rec.optimizer.param_groups
    assert {id(p) for p in groups[0]["params"]} == latent_ids and not latent_ids & {id(p) for p in groups[1]["params"]}
    for name, p in rec.module.model.named_parameters():
        assert torch.equal(p, start[name]) != (id(p) in latent_ids), name


def test_latent_weights_at_the_clip_are_recorded(tiny_config, synthetic):
    """Latent weights started beyond the clip are clipped to +-1 at the first step; the History's latent_at_clip is
    the fraction of weights at +-1 at the epoch's end (positive here, and below the third that started beyond)."""
    from torchbop.models import MnistBNN

    model = MnistBNN(mode="latent")
    for _, w in named_binary_parameters(model):
        w.data.uniform_(-1.5, 1.5)
    history = History()
    train(
        tiny_config(mode="latent", optimizer="sgd", lr=0.01, epochs=1, limit_train_batches=3),
        data=synthetic,
        model=model,
        observers=[history],
        loggers=False,
    )
    latent = [w for _, w in named_binary_parameters(model)]
    at_clip = sum(int((w.abs() == 1).sum()) for w in latent) / sum(w.numel() for w in latent)
    assert history.epochs[-1]["latent_at_clip"] == at_clip and 0.05 < at_clip < 0.34


def test_latent_weights_are_clipped_to_the_bound_the_model_declares(tiny_config, synthetic):
    """A model with ``latent_weight_bound`` (QuickNet: Larq Zoo's WeightClip(1.25)) is clipped there, not at 1."""
    from torchbop.models import MnistBNN

    class WideClip(MnistBNN):
        latent_weight_bound = 1.25

    model = WideClip(mode="latent")
    for _, w in named_binary_parameters(model):
        w.data.uniform_(-2.0, 2.0)
    history = History()
    train(
        tiny_config(mode="latent", optimizer="sgd", lr=0.01, epochs=1, limit_train_batches=2),
        data=synthetic,
        model=model,
        observers=[history],
        loggers=False,
    )
    latent = torch.cat([w.detach().abs().flatten() for _, w in named_binary_parameters(model)])
    assert latent.max() == 1.25 and int((latent > 1.0).sum()) > 0.1 * latent.numel()
    at_bound = int((latent == 1.25).sum()) / latent.numel()
    assert history.epochs[-1]["latent_at_clip"] == at_bound > 0


def test_training_without_validation_writes_last_checkpoint_only(tiny_config, synthetic):
    # no validation: no "best" checkpoint, and no clash between two unmonitored checkpoint callbacks
    result = train(tiny_config(epochs=1, limit_train_batches=2, limit_eval_batches=0), data=synthetic, loggers=False)
    assert result["best_checkpoint"] is None and result["best_val_loss"] is None
    assert result["last_checkpoint"] and Path(result["last_checkpoint"]).is_file()


class TestMemoryFormat:
    """The loaders produce batches in the format the model computes in: channels_last for the shipped conv models."""

    @staticmethod
    def record_inputs(model):
        strides = []
        model.register_forward_pre_hook(lambda m, args: strides.append(args[0].stride()))
        return strides

    def test_shipped_model_gets_channels_last_batches(self, tiny_config, synthetic):
        from torchbop.models import MnistBNN

        model = MnistBNN()
        strides = self.record_inputs(model)
        result = train(
            tiny_config(epochs=1, limit_train_batches=2, limit_eval_batches=1),
            data=synthetic,
            model=model,
            loggers=False,
        )
        assert result["memory_format"] == "channels_last"
        assert strides and set(strides) <= {(784, 1, 28, 1)}  # train, validation and test batches: NHWC

    def test_nchw_model_gets_nchw_batches(self, tiny_config, synthetic):
        from torchbop.models import MnistBNN

        model = MnistBNN(channels_last=False)
        strides = self.record_inputs(model)
        result = train(
            tiny_config(epochs=1, limit_train_batches=2, limit_eval_batches=1),
            data=synthetic,
            model=model,
            loggers=False,
        )
        assert result["memory_format"] == "contiguous"
        assert strides and set(strides) <= {(784, 784, 28, 1)}

    def test_same_network_in_both_formats(self, synthetic):
        """The same weights compute the same outputs in both formats, in training and evaluation mode, to rounding.

        Training is not compared step by step: where a max-pooling window holds a tied maximum (4% of the 4x4
        windows after the first binary convolution on these synthetic images, which have 61 grey levels), which
        entry gets the gradient is the kernel's choice, and the NCHW and channels_last backward kernels choose
        differently on AVX-512 CPUs; after the first weight that flips differently, two BNN runs part.
        """
        from torchbop.models import MnistBNN

        images = synthetic["train"][0][:64].float().unsqueeze(1) / 255
        torch.manual_seed(0)
        nhwc, nchw = MnistBNN(channels_last=True), MnistBNN(channels_last=False)
        nchw.load_state_dict(nhwc.state_dict())
        for train_mode in (True, False):
            nhwc.train(train_mode), nchw.train(train_mode)
            a = nhwc(images.contiguous(memory_format=torch.channels_last))
            b = nchw(images)
            assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max()), f"train mode {train_mode}"
