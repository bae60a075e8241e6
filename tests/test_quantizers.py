"""Tests for torchbop.quantizers, in classes by concern: common behaviour, forward values, gradients, the stochastic
quantizer, and torch.compile. Inputs contain zeros on purpose (sign(0) = +1), and values exactly on the clip
boundary of each dtype.
"""

import math

import pytest
import torch

from torchbop.quantizers import (
    ApproxSign,
    Sign,
    SteSign,
    StochasticSign,
    SwishSign,
    approx_sign,
    sign,
    ste_sign,
    stochastic_sign,
    swish_sign,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
DETERMINISTIC = {  # name -> (function, module); all compute sign(x) forward
    "sign": (sign, Sign()),
    "ste_sign": (ste_sign, SteSign()),
    "approx_sign": (approx_sign, ApproxSign()),
    "swish_sign": (swish_sign, SwishSign()),
}


def real_values_with_zeros(shape=(4, 50), dtype=torch.float32, seed=0):
    """Normal values times 2, with about a fifth of them set to exactly 0 (and the first to -0.0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    x[torch.rand(shape, generator=g) < 0.2] = 0.0
    x.view(-1)[0] = -0.0
    return x.to(dtype)


def reference_sign(x):
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def neighbours(value, dtype):
    """``value`` rounded to ``dtype`` and the representable numbers just below and above it, as a dtype tensor."""
    int_type = {16: torch.int16, 32: torch.int32, 64: torch.int64}[torch.finfo(dtype).bits]
    r = torch.tensor([value], dtype=torch.float64).to(dtype)
    bits = r.view(int_type)
    return torch.cat([(bits - 1).view(dtype), r, (bits + 1).view(dtype)])


def _grad(fn, x):
    x = x.clone().requires_grad_(True)
    fn(x).backward(torch.ones_like(x))
    return x.grad


class TestCommonFunctionality:
    @pytest.mark.parametrize("name", DETERMINISTIC)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_output_dtype_and_shape(self, name, dtype):
        fn, module = DETERMINISTIC[name]
        x = real_values_with_zeros((3, 5, 7), dtype)
        for y in (fn(x), module(x)):
            assert y.dtype == dtype
            assert y.shape == x.shape

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_stochastic_output_dtype(self, dtype):
        x = real_values_with_zeros((3, 5), dtype)
        assert stochastic_sign(x).dtype == dtype
        assert StochasticSign()(x).dtype == dtype

    @pytest.mark.parametrize("name", DETERMINISTIC)
    def test_function_and_module_agree(self, name):
        fn, module = DETERMINISTIC[name]
        x = real_values_with_zeros()
        torch.testing.assert_close(fn(x), module(x), rtol=0, atol=0)
        torch.testing.assert_close(_grad(fn, x), _grad(module, x), rtol=0, atol=0)

    def test_reprs(self):
        assert repr(Sign()) == "Sign()"
        assert repr(SteSign(0.5)) == "SteSign(clip_value=0.5)"
        assert repr(ApproxSign()) == "ApproxSign()"
        assert repr(SwishSign(2)) == "SwishSign(beta=2.0)"
        assert repr(StochasticSign()) == "StochasticSign(generator=None)"
        assert repr(StochasticSign(torch.Generator())) == "StochasticSign(generator=Generator(device=cpu))"

    def test_modules_have_no_state(self):
        for module in (Sign(), SteSign(), ApproxSign(), SwishSign(), StochasticSign(torch.Generator())):
            assert module.state_dict() == {}
            assert list(module.parameters()) == []

    @pytest.mark.parametrize(
        "build, error, match",
        [
            (lambda: SteSign(0.0), ValueError, r"Invalid clip_value: 0.0 \(must be > 0\)"),
            (lambda: SteSign(-1), ValueError, "Invalid clip_value: -1"),
            (lambda: SteSign(math.nan), ValueError, "Invalid clip_value: nan"),
            (lambda: SteSign("1"), TypeError, "clip_value must be a real number, got str"),
            (lambda: ste_sign(torch.ones(2), clip_value=0), ValueError, "Invalid clip_value: 0"),
            (lambda: SwishSign(0.0), ValueError, r"Invalid beta: 0.0 \(must be > 0\)"),
            (lambda: swish_sign(torch.ones(2), beta=-5.0), ValueError, "Invalid beta: -5.0"),
            (lambda: StochasticSign(generator=0), TypeError, "generator must be a torch.Generator or None, got int"),
            (lambda: stochastic_sign(torch.ones(2), generator="a"), TypeError, "got str"),
        ],
    )
    def test_errors(self, build, error, match):
        with pytest.raises(error, match=match):
            build()

    def test_infinite_clip_value_is_allowed(self):
        assert SteSign(math.inf).clip_value == math.inf


class TestQuantization:
    @pytest.mark.parametrize("name", DETERMINISTIC)
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_matches_reference_sign(self, name, dtype):
        fn, _ = DETERMINISTIC[name]
        x = real_values_with_zeros(dtype=dtype)
        assert (x == 0).sum() > 10  # the zeros are really there
        torch.testing.assert_close(fn(x), reference_sign(x), rtol=0, atol=0)

    def test_sign_of_zero_is_plus_one(self):
        x = torch.tensor([0.0, -0.0, -1e-30, 1e-30])
        assert sign(x).tolist() == [1.0, 1.0, -1.0, 1.0]
        assert torch.sign(x)[0] == 0  # the reason sign exists

    def test_nan_follows_the_documented_convention(self):
        x = torch.tensor([math.nan])
        assert sign(x).item() == 1.0 and ste_sign(x).item() == 1.0
        assert approx_sign(x).item() == 1.0 and swish_sign(x).item() == 1.0
        assert stochastic_sign(x).item() == -1.0

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_extremes(self, dtype):
        info = torch.finfo(dtype)
        x = torch.tensor([info.min, -info.tiny, info.tiny, info.max, -math.inf, math.inf], dtype=dtype)
        assert sign(x).tolist() == [-1.0, -1.0, 1.0, 1.0, -1.0, 1.0]

    def test_does_not_modify_input(self):
        x = real_values_with_zeros()
        before = x.clone()
        for fn, module in DETERMINISTIC.values():
            fn(x), module(x)
        stochastic_sign(x)
        assert torch.equal(x, before)

    def test_non_contiguous_input(self):
        x = real_values_with_zeros((6, 8)).t()
        assert not x.is_contiguous()
        torch.testing.assert_close(ste_sign(x), reference_sign(x), rtol=0, atol=0)


class TestGradients:
    def test_sign_gradient_is_zero(self):
        x = real_values_with_zeros()
        grad = _grad(sign, x)
        assert grad is not None and torch.equal(grad, torch.zeros_like(x))

    @pytest.mark.parametrize("clip_value", [1.0, 0.5, 2.0, 0.3, 1e-3])
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_ste_gradient_is_one_inside_clip_zero_outside(self, clip_value, dtype):
        # Random values plus the dtype's numbers just around +-clip_value: the boundary is inclusive.
        around = neighbours(clip_value, dtype)
        x = torch.cat([real_values_with_zeros(dtype=dtype).flatten(), around, -around])
        expected = (x.double().abs() <= clip_value).to(dtype)
        assert 0 < expected.sum() < x.numel()
        torch.testing.assert_close(_grad(lambda t: ste_sign(t, clip_value), x), expected, rtol=0, atol=0)
        torch.testing.assert_close(_grad(SteSign(clip_value), x), expected, rtol=0, atol=0)

    def test_ste_boundary_is_inclusive(self):
        above = math.nextafter(1.0, 2.0)
        x = torch.tensor([-1.0, 1.0, above, -above], dtype=torch.float64)
        assert _grad(ste_sign, x).tolist() == [1.0, 1.0, 0.0, 0.0]

    def test_ste_gradient_scales_upstream_gradient(self):
        x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
        ste_sign(x).backward(torch.tensor([3.0, -4.0, 5.0, 6.0, 7.0]))
        assert x.grad.tolist() == [0.0, -4.0, 5.0, 6.0, 0.0]

    def test_ste_without_clip(self):
        x = torch.tensor([-1e30, -3.0, 0.0, 3.0, 1e30, math.inf])
        assert _grad(lambda t: ste_sign(t, math.inf), x).tolist() == [1.0] * 6

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_approx_sign_gradient(self, dtype):
        x = torch.cat([real_values_with_zeros(dtype=dtype).flatten(), torch.tensor([-1.0, 1.0, 0.5], dtype=dtype)])
        expected = torch.clamp(2 - 2 * x.double().abs(), min=0)
        tol = {"rtol": 1e-2, "atol": 1e-2} if dtype in (torch.float16, torch.bfloat16) else {}
        grad = _grad(approx_sign, x)
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.double(), expected, **tol)

    def test_approx_sign_is_derivative_of_its_polynomial(self):
        # The surrogate is the derivative of 2x - x|x| on [-1, 1] (and of the constant +-1 outside).
        x = torch.linspace(-1.5, 1.5, 301, dtype=torch.float64)
        smooth = _grad(lambda t: torch.where(t.abs() < 1, 2 * t - t * t.abs(), torch.sign(t)), x)
        torch.testing.assert_close(_grad(approx_sign, x), smooth)

    @pytest.mark.parametrize("beta", [5.0, 1.0, 10.0])
    def test_swish_sign_gradient_formula(self, beta):
        x = real_values_with_zeros(dtype=torch.float64)
        bx = beta * x
        expected = beta * (2 - bx * torch.tanh(bx / 2)) / (1 + torch.cosh(bx))
        torch.testing.assert_close(_grad(lambda t: swish_sign(t, beta), x), expected)
        torch.testing.assert_close(_grad(SwishSign(beta), x), expected)

    @pytest.mark.parametrize("beta", [5.0, 2.0])
    def test_swish_sign_is_derivative_of_sign_swish(self, beta):
        # SignSwish: 2 sigmoid(bx) (1 + bx (1 - sigmoid(bx))) - 1; its autograd derivative must match the closed form.
        def sign_swish(t):
            s = torch.sigmoid(beta * t)
            return 2 * s * (1 + beta * t * (1 - s)) - 1

        x = torch.linspace(-3, 3, 241, dtype=torch.float64)
        torch.testing.assert_close(_grad(lambda t: swish_sign(t, beta), x), _grad(sign_swish, x))
        assert _grad(lambda t: swish_sign(t, beta), torch.zeros(1, dtype=torch.float64)).item() == beta

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
    def test_swish_sign_half_precision_is_finite(self, dtype):
        x = torch.tensor([0.0, 0.1, -3.0, 300.0, -30000.0], dtype=dtype)
        grad = _grad(swish_sign, x)
        assert grad.dtype == dtype and torch.isfinite(grad).all()
        assert grad[0] == 5.0

    @pytest.mark.parametrize(
        "quantizer",
        [
            sign,
            ste_sign,
            lambda t: ste_sign(t, 0.5),
            lambda t: ste_sign(t, math.inf),
            approx_sign,
            swish_sign,
            stochastic_sign,
            SteSign(),
            ApproxSign(),
            SwishSign(),
            StochasticSign(),
        ],
        ids=[
            "sign",
            "ste_sign",
            "ste_sign_0.5",
            "ste_sign_inf",
            "approx_sign",
            "swish_sign",
            "stochastic_sign",
            "SteSign",
            "ApproxSign",
            "SwishSign",
            "StochasticSign",
        ],
    )
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("n", [1, 7, 1000])  # CPU kernels handle short tails with scalar code, the rest vectorized
    def test_gradient_is_zero_at_nan(self, quantizer, dtype, n):
        # Larq: tf.where(|x| <= clip, dy, 0) is 0 at NaN, whatever dy; so is torchbop, for every quantizer
        x = torch.full((n,), 0.25, dtype=dtype)
        x[0] = x[n // 2] = math.nan
        upstream = torch.full((n,), 3.0, dtype=dtype)
        upstream[n // 2] = math.nan  # a NaN activation usually gets a NaN gradient from above
        x.requires_grad_(True)
        quantizer(x).backward(upstream)
        assert x.grad[0].item() == 0.0 and x.grad[n // 2].item() == 0.0
        assert torch.isfinite(x.grad).all()

    def test_gradient_next_to_nan_is_unchanged(self):
        x = torch.tensor([math.nan, 0.5, -0.25, 2.0, 1.0] * 5, dtype=torch.float64)
        finite = ~x.isnan()
        assert _grad(ste_sign, x)[finite].tolist() == _grad(ste_sign, x[finite]).tolist()
        assert _grad(approx_sign, x)[finite].tolist() == _grad(approx_sign, x[finite]).tolist()
        # tanh/cosh may differ by an ulp between the vectorized and the scalar loop, so positions matter here
        torch.testing.assert_close(_grad(swish_sign, x)[finite], _grad(swish_sign, x[finite]))

    def test_swish_gradient_at_infinity_is_its_limit(self):
        x = torch.tensor([math.inf, -math.inf, 1e30, -1e30])
        assert _grad(swish_sign, x).tolist() == [0.0, 0.0, 0.0, 0.0]

    def test_no_grad_input_builds_no_graph(self):
        x = real_values_with_zeros()
        for fn, module in DETERMINISTIC.values():
            assert not fn(x).requires_grad and not module(x).requires_grad


class TestStochasticSign:
    def test_values_are_binary(self):
        y = stochastic_sign(real_values_with_zeros())
        assert set(y.unique().tolist()) == {-1.0, 1.0}

    def test_saturated_inputs_are_deterministic(self):
        x = torch.tensor([-5.0, -1.0, 1.0, 5.0]).repeat(1000)
        y = stochastic_sign(x, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(y, torch.sign(x), rtol=0, atol=0)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    def test_mean_is_two_hard_sigmoid_minus_one(self, dtype):
        values = torch.tensor([-0.9, -0.5, -0.1, 0.0, 0.25, 0.75], dtype=dtype)
        n = 20_000
        samples = stochastic_sign(values.repeat(n, 1), generator=torch.Generator().manual_seed(1))
        expected = 2 * torch.clamp((values.float() + 1) / 2, 0, 1) - 1
        # Standard error <= 1/sqrt(n) = 0.007; 0.03 is more than 4 of them.
        torch.testing.assert_close(samples.float().mean(0), expected, rtol=0, atol=0.03)

    def test_generator_reproducibility(self):
        x = real_values_with_zeros((50, 50)).clamp(-0.9, 0.9)
        a = stochastic_sign(x, generator=torch.Generator().manual_seed(123))
        b = stochastic_sign(x, generator=torch.Generator().manual_seed(123))
        c = stochastic_sign(x, generator=torch.Generator().manual_seed(124))
        assert torch.equal(a, b)
        assert not torch.equal(a, c)

    def test_module_generator_advances_and_replays(self):
        x = torch.zeros(1000)
        q = StochasticSign(torch.Generator().manual_seed(0))
        first, second = q(x), q(x)
        assert not torch.equal(first, second)  # successive calls draw fresh noise
        assert torch.equal(first, StochasticSign(torch.Generator().manual_seed(0))(x))  # same seed, same draws

    def test_global_generator_is_used_without_generator(self):
        x = torch.zeros(1000)
        torch.manual_seed(7)
        a = stochastic_sign(x)
        torch.manual_seed(7)
        assert torch.equal(a, stochastic_sign(x))

    def test_straight_through_gradient(self):
        x = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.6, 1.0, 1.5])
        assert _grad(stochastic_sign, x).tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


class TestCompile:
    @pytest.mark.parametrize("backend", ["eager", "aot_eager"])
    @pytest.mark.parametrize(
        "module", [Sign(), SteSign(0.5), ApproxSign(), SwishSign(), StochasticSign()], ids=lambda m: repr(m)
    )
    def test_compiled_module_matches_eager(self, backend, module):
        torch._dynamo.reset()
        x = torch.tensor([-2.0, -0.5, -0.0, 0.0, 0.3, 0.5, 1.0, 3.0, math.nan])
        compiled = torch.compile(module, backend=backend, fullgraph=True)
        torch.manual_seed(0)
        y = compiled(x)
        g = _grad(compiled, x)
        torch.manual_seed(0)
        torch.testing.assert_close(y, module(x), rtol=0, atol=0)
        torch.testing.assert_close(g, _grad(module, x), rtol=0, atol=0)

    def test_stochastic_sign_with_generator_compiles(self):
        # A torch.Generator argument makes dynamo run this call eagerly (a graph break); results are unchanged.
        torch._dynamo.reset()
        x = torch.linspace(-1, 1, 101)
        compiled = torch.compile(StochasticSign(torch.Generator().manual_seed(5)), backend="eager")
        assert torch.equal(compiled(x), StochasticSign(torch.Generator().manual_seed(5))(x))

    def test_inductor_ste_sign(self):
        torch._dynamo.reset()
        x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 3.0, math.nan])

        def fn(t):
            return ste_sign(t, 1.0) * 2

        compiled = torch.compile(fn, fullgraph=True)  # default backend: inductor
        assert compiled(x).tolist() == [-2.0, -2.0, -2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
        assert _grad(compiled, x).tolist() == [0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0]
