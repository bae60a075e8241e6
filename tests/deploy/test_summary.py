"""summary(): parameters, 1-bit memory and MACs per layer, checked against a hand computation from SPEC.md."""

from __future__ import annotations

import pytest
import torch

from torchbop.deploy import summary
from torchbop.models import BinaryNet, MnistBNN


def binarynet_by_hand():
    """BinaryNet (SPEC section 4) counted by hand: 3x3 convs 3-128 (valid: 32 -> 30), 128-128 (pool: 15), 128-256,
    256-256 (pool: 7), 256-512, 512-512 (pool: 3); dense 4608-1024-1024-10; a shift-only batch norm after each."""
    convs = [  # (in, out, output side)
        (3, 128, 30),
        (128, 128, 30),
        (128, 256, 15),
        (256, 256, 15),
        (256, 512, 7),
        (512, 512, 7),
    ]
    dense = [(4608, 1024), (1024, 1024), (1024, 10)]
    conv_weights = [c_in * c_out * 9 for c_in, c_out, _ in convs]
    conv_macs = [side * side * c_out * c_in * 9 for c_in, c_out, side in convs]
    dense_weights = [n_in * n_out for n_in, n_out in dense]
    bn_channels = [c_out for _, c_out, _ in convs] + [n_out for _, n_out in dense]
    binary = sum(conv_weights) + sum(dense_weights)
    floats = 3 * sum(bn_channels)  # shift + running mean + running variance
    return {
        "binary_params": binary,
        "float_params": floats,
        "memory_bytes": binary / 8 + 4 * floats,
        "float32_bytes": 4 * (binary + floats),
        "binary_macs": sum(conv_macs[1:]) + sum(dense_weights),  # every layer but the first has +-1 inputs
        "float_macs": conv_macs[0],  # real pixels times +-1 weights
    }


def test_binarynet_against_the_hand_computation():
    s = summary(BinaryNet(), (3, 32, 32))
    expected = binarynet_by_hand()
    assert expected["binary_params"] == 10_352_000  # SPEC's figure
    for key, value in expected.items():
        assert getattr(s, key) == value, key
    assert s.compression_ratio == pytest.approx(expected["float32_bytes"] / expected["memory_bytes"])
    assert s.compression_ratio == pytest.approx(30.93, abs=0.01)
    first, flatten = s.rows[0], next(r for r in s.rows if r.type == "Flatten")
    assert (first.name, first.output_shape, first.binary_params) == ("features.0", (128, 30, 30), 3456)
    assert flatten.output_shape == (4608,)
    text = str(s)
    assert "10,352,000" in text and "30.93" in text and "BinaryConv2d" in text and "Float-32 equivalent" in text


def test_mnist_bnn_by_hand():
    s = summary(MnistBNN(), (1, 28, 28))
    weights = [1 * 32 * 9, 32 * 64 * 9, 64 * 64 * 9, 576 * 64, 64 * 10]
    assert s.binary_params == sum(weights) == 93_088
    assert s.float_params == 3 * (32 + 64 + 64 + 64 + 10)
    assert s.float_macs == 28 * 28 * 32 * 9  # same padding: 28 x 28 outputs
    assert s.binary_macs == 14 * 14 * 64 * 32 * 9 + 7 * 7 * 64 * 64 * 9 + 576 * 64 + 64 * 10


def test_latent_mode_and_reproduction_variant():
    latent = summary(BinaryNet(width=0.125, mode="latent"), (3, 32, 32))
    bop = summary(BinaryNet(width=0.125), (3, 32, 32))
    assert latent.rows == bop.rows  # latent weights are stored as floats, but deploy as 1 bit all the same
    repro = summary(BinaryNet(width=0.125, variant="reproduction"), (3, 32, 32))
    # biases and affine batch norm are float parameters: 16+16+32+32+64+64+128+128+10 outputs with a bias each,
    # every batch norm has scale, shift and two statistics except the last (statistics only)
    outputs = [16, 16, 32, 32, 64, 64, 128, 128, 10]
    assert repro.float_params == sum(outputs) + 4 * sum(outputs[:-1]) + 2 * 10


def test_restores_training_mode_and_leaves_statistics_alone():
    model = MnistBNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary(model, (1, 28, 28))
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class TestInputSize:
    def test_with_and_without_the_batch_dimension(self):
        model = BinaryNet(width=0.125)
        assert summary(model, (1, 3, 32, 32)).rows == summary(model, (3, 32, 32)).rows
        assert summary(MnistBNN(), [1, 1, 28, 28]).rows == summary(MnistBNN(), (1, 28, 28)).rows

    @pytest.mark.parametrize("size", [(32, 32), (1, 1, 3, 32, 32), (3, 0, 32), "3x32x32"])
    def test_a_wrong_size_names_it(self, size):
        with pytest.raises(ValueError, match="Invalid input_size"):
            summary(BinaryNet(width=0.125), size)


class TestLayerKinds:
    def test_grouped_depthwise_and_1d_convolutions(self):
        from torch import nn

        from torchbop.nn import BinaryConv1d, BinaryConv2d

        model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=4), BinaryConv2d(8, 8, 3, padding=1, groups=8))
        s = summary(model, (4, 6, 6))
        assert [r.float_macs for r in s.rows] == [36 * 8 * 1 * 9, 0]
        assert [r.binary_macs for r in s.rows] == [0, 36 * 8 * 1 * 9]
        s1 = summary(nn.Sequential(nn.Conv1d(3, 4, 3), BinaryConv1d(4, 6, 3, groups=2)), (1, 3, 10))
        assert s1.float_macs == 8 * 4 * 3 * 3 and s1.binary_macs == 6 * 6 * 2 * 3  # lengths 8 then 6

    def test_residual_blocks_rsign_and_each_layer_once(self):
        from torchbop.models import create_model
        from torchbop.nn import BinaryConv2d

        model = create_model("reactnet_a", stem="cifar10", width=0.125)
        s = summary(model, (1, 3, 32, 32))
        assert s.total_params == sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")
        )
        binary = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
        rows = {r.name: r for r in s.rows}
        names = {m: n for n, m in model.named_modules()}
        assert all(rows[names[m]].binary_macs > 0 and rows[names[m]].float_macs == 0 for m in binary)
        assert "RPReLU" in {r.type for r in s.rows}  # RSign is inside the binary layers (input_quantizer)

    def test_a_binary_layer_fed_by_an_rsign_layer_has_binary_macs(self):
        from torch import nn

        from torchbop.nn import BinaryConv2d, RSign

        fed = nn.Sequential(nn.Conv2d(3, 4, 1), RSign(4), BinaryConv2d(4, 4, 3, input_quantizer=None))
        real = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), BinaryConv2d(4, 4, 3, input_quantizer=None))
        macs = 4 * 4 * 4 * 4 * 9  # 4x4 outputs of 4 channels, 4 * 3 * 3 each
        assert (summary(fed, (3, 6, 6)).rows[2].binary_macs, summary(real, (3, 6, 6)).rows[2].binary_macs) == (macs, 0)
