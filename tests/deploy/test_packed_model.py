"""Packed inference computes the model's eval-mode forward: same argmax on real test images, same logits.

Tolerance: the binary layers are exact integers on both sides; the real-input first convolution and the batch norms
are the same torch calls on the same numbers in the same memory format, so the logits come out equal bit for bit
here. ``assert_close`` with rtol = atol = 1e-5 leaves room for float32 rounding only (a kernel that sums in another
order), while a wrong bit, sign or border term moves a logit by at least 2 / sqrt(var + eps) of its batch norm.

A freshly built BNN has running statistics 0 and 1, far from what its integer activations need; every model here
gets its batch-norm statistics from a pass over the images in train mode (``momentum=None``: the plain average) and
random shifts, so that signs flip both ways and predictions differ between images, as after training.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchbop.deploy import PackedModel, export, load_packed, pack_model
from torchbop.deploy.xnor_kernel import kernel_available
from torchbop.models import BinaryNet, MnistBNN
from torchbop.nn import BinaryConv2d, BinaryLinear, ShiftBatchNorm1d, ShiftBatchNorm2d

BACKENDS = ("kernel", "torch")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_kernel_builds_here():
    assert kernel_available(), "the XNOR-popcount kernel did not build (is a C compiler on the PATH?)"


def calibrate(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Set every batch norm's running statistics to their average over ``images`` (one train-mode pass); eval."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        model.train()(images)
    return model.eval()


def shift_batch_norms(model: nn.Module, seed: int) -> nn.Module:
    """Random learned shifts (and, for affine batch norm, scales of both signs), as training leaves them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.5)
                if module.weight is not None:
                    module.weight.copy_(torch.randn(module.weight.shape, generator=g))
    return model


def assert_same_predictions(model: nn.Module, images: torch.Tensor, backend: str, *, batch: int = 100) -> None:
    packed = pack_model(model, backend=backend)
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = images[start : start + batch]
            expected, got = model(x), packed(x)
            assert torch.equal(got.argmax(1), expected.argmax(1))
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def sensible(model: nn.Module, images: torch.Tensor) -> None:
    """The check is not vacuous: predictions vary across images."""
    with torch.no_grad():
        assert len(model(images).argmax(1).unique()) >= 3


class TestRealImages:
    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("padding", ["same", "valid"])
    @pytest.mark.parametrize("channels_last", [True, False])
    def test_mnist_bnn(self, mnist_images, backend, padding, channels_last):
        images, _ = mnist_images
        torch.manual_seed(0)
        model = calibrate(shift_batch_norms(MnistBNN(padding=padding, channels_last=channels_last), 1), images)
        sensible(model, images)
        assert_same_predictions(model, images, backend)

    @pytest.mark.parametrize("backend", BACKENDS)
    @pytest.mark.parametrize("variant", ["original", "reproduction"])
    @pytest.mark.parametrize("channels_last", [True, False])
    def test_binarynet(self, cifar10_images, backend, variant, channels_last):
        images, _ = cifar10_images
        torch.manual_seed(1)
        model = BinaryNet(width=1 / 16, variant=variant, channels_last=channels_last)
        model = calibrate(shift_batch_norms(model, 2), images)
        sensible(model, images)
        assert_same_predictions(model, images, backend)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_latent_mode_binarizes_with_sign(self, mnist_images, backend):
        images, _ = mnist_images
        torch.manual_seed(2)
        model = MnistBNN(mode="latent")
        with torch.no_grad():
            model.features[3].weight[0, 0, 0, 0] = 0.0  # sign(0) = +1
        assert_same_predictions(calibrate(shift_batch_norms(model, 3), images), images, backend)

    def test_trained_weights_after_a_few_bop_steps(self, mnist_images):
        """Weights and batch norms moved by training (Bop + Adam), not only drawn at random."""
        from torchbop import Bop, CompositeOptimizer, split_binary_params

        images, labels = mnist_images
        torch.manual_seed(3)
        model = MnistBNN()
        binary, other = split_binary_params(model)
        bop = Bop(binary, gamma=1e-2, threshold=1e-6, fused=False)
        optimizer = CompositeOptimizer(bop, torch.optim.Adam(other, lr=0.01), model=model)
        for start in range(0, 200, 50):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(images[start : start + 50]), labels[start : start + 50]).backward()
            optimizer.step()
        assert_same_predictions(calibrate(model, images), images, "kernel")


class TestLayerCorners:
    """Strides, dilations, asymmetric padding, channels that fill no byte, Larq's pad values, zeros in the input."""

    def corner_model(self, pad_value: float) -> nn.Sequential:
        torch.manual_seed(4)
        return nn.Sequential(
            BinaryConv2d(3, 5, 3, padding=1, input_quantizer=None),
            ShiftBatchNorm2d(5),
            BinaryConv2d(5, 11, 3, stride=2, padding=2, dilation=2),
            nn.MaxPool2d(2, ceil_mode=True),
            ShiftBatchNorm2d(11),
            BinaryConv2d(11, 9, (3, 2), padding="same", pad_value=pad_value),
            nn.BatchNorm2d(9),
            BinaryConv2d(9, 64, 1),
            nn.BatchNorm2d(64),
            nn.Flatten(),
            nn.Dropout(0.5),
            BinaryLinear(64 * 5 * 5, 70, bias=True),
            ShiftBatchNorm1d(70),
            BinaryLinear(70, 10),
            ShiftBatchNorm1d(10),
        )

    @pytest.mark.parametrize("pad_value", [0.0, -1.0, 1.0])
    def test_kernel_equals_torch_equals_model(self, pad_value):
        model = self.corner_model(pad_value)
        g = torch.Generator().manual_seed(5)
        x = torch.randint(-2, 3, (40, 3, 17, 18), generator=g).float() / 2  # many exact zeros: sign(0) = +1
        model = calibrate(shift_batch_norms(model, 6), x)
        with torch.no_grad():
            expected = model(x)
            x[0, :, 0, 0] = -0.0  # -0.0 >= 0: +1, as the model's sign
            expected = model(x)
        kernel, reference = pack_model(model, backend="kernel")(x), pack_model(model, backend="torch")(x)
        assert torch.equal(kernel, reference)
        torch.testing.assert_close(kernel, expected, rtol=1e-5, atol=1e-5)

    def test_batch_of_one_and_new_input_sizes(self):
        model = calibrate(self.corner_model(0.0), torch.randn(20, 3, 17, 18))
        packed = pack_model(model, backend="kernel")
        for shape in [(1, 3, 17, 18), (3, 3, 17, 18)]:
            x = torch.randn(shape)
            torch.testing.assert_close(packed(x), model(x).detach(), rtol=1e-5, atol=1e-5)


class TestFileRoundTrip:
    def test_loaded_model_predicts_as_the_model(self, tmp_path, cifar10_images):
        images, _ = cifar10_images
        torch.manual_seed(7)
        model = calibrate(shift_batch_norms(BinaryNet(width=1 / 8), 8), images)
        path = export(model, tmp_path / "net.tbop", input_shape=[3, 32, 32])
        packed = load_packed(path)
        assert isinstance(packed, PackedModel) and packed.input_shape == [3, 32, 32]
        with torch.no_grad():
            assert torch.equal(packed(images[:100]), model(images[:100]))

    def test_inference_only(self, tmp_path):
        packed = pack_model(MnistBNN().eval())
        assert not packed.training and not any(m.training for m in packed.modules())
        with pytest.raises(RuntimeError, match="inference only"):
            packed.train()
        packed.eval()  # allowed
        assert not packed(torch.randn(2, 1, 28, 28)).requires_grad


class TestAnyModule:
    def test_a_single_layer_is_a_network(self):
        """No nn.Sequential parts needed: the fx graph of any module (errors: tests/deploy/test_graph.py)."""
        model = BinaryLinear(16, 3, bias=True).eval()
        x = torch.randn(5, 16)
        assert torch.equal(pack_model(model, backend="kernel")(x), model(x).detach())
