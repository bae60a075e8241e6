"""The Gaussian smoother of the report's curves, against hand-computed cases."""

import math

import pytest
import torch

from torchbop.experiments.stats import gaussian_filter1d, gaussian_kernel


class TestKernel:
    def test_hand_computed_weights(self):
        # std 1, truncate 1: radius int(1 + 0.5) = 1, weights e^-0.5, 1, e^-0.5, normalized
        e = math.exp(-0.5)
        expected = torch.tensor([e, 1.0, e], dtype=torch.float64) / (1 + 2 * e)
        torch.testing.assert_close(gaussian_kernel(1.0, truncate=1.0), expected)

    def test_radius_is_four_std_by_default(self):
        assert len(gaussian_kernel(100.0)) == 2 * 400 + 1
        assert len(gaussian_kernel(2.4)) == 2 * 10 + 1  # int(9.6 + 0.5) = 10

    @pytest.mark.parametrize("std", [-1.0, math.inf, math.nan])
    def test_invalid_std(self, std):
        with pytest.raises(ValueError, match="Invalid std value"):
            gaussian_kernel(std)


class TestFilter:
    def test_impulse_in_the_interior_spreads_into_the_kernel(self):
        e = math.exp(-0.5)
        w0, w1 = 1 / (1 + 2 * e), e / (1 + 2 * e)  # 0.4519, 0.2741
        out = gaussian_filter1d([0.0, 0.0, 1.0, 0.0, 0.0], 1.0, truncate=1.0)
        torch.testing.assert_close(out, torch.tensor([0.0, w1, w0, w1, 0.0], dtype=torch.float64))

    def test_ends_are_reflected(self):
        # [1, 0, 0] extended to [1 | 1, 0, 0 | 0] (a b c -> a | a b c | c)
        e = math.exp(-0.5)
        w0, w1 = 1 / (1 + 2 * e), e / (1 + 2 * e)
        out = gaussian_filter1d([1.0, 0.0, 0.0], 1.0, truncate=1.0)
        torch.testing.assert_close(out, torch.tensor([w1 + w0, w1, 0.0], dtype=torch.float64))

    def test_reflection_repeats_for_kernels_longer_than_the_curve(self):
        # radius 8 on 3 samples: the periodic reflection keeps a constant constant and the mean of a ramp in place
        torch.testing.assert_close(gaussian_filter1d([2.0, 2.0, 2.0], 2.0), torch.full((3,), 2.0, dtype=torch.float64))
        out = gaussian_filter1d([0.0, 1.0, 2.0], 2.0)
        assert out[0] < out[1] < out[2] and abs(float(out[1]) - 1.0) < 1e-12

    def test_linear_ramp_is_unchanged_away_from_the_ends(self):
        x = torch.arange(100, dtype=torch.float64)
        out = gaussian_filter1d(x, 3.0)
        torch.testing.assert_close(out[20:80], x[20:80])

    def test_smoothing_reduces_noise_and_keeps_length(self):
        noise = torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        out = gaussian_filter1d(noise, 100.0)
        assert out.shape == noise.shape
        assert out.std() < 0.1 * noise.std()

    def test_zero_std_is_the_identity(self):
        x = torch.tensor([3.0, -1.0, 4.0])
        torch.testing.assert_close(gaussian_filter1d(x, 0.0), x.double())
