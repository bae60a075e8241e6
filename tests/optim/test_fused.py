"""The fused path's machinery: the automatic choice, the fallback without a compiler, one compilation per kernel,
kernels kept on disk for the next process."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from torchbop.optim import Bop, Bop2ndOrder, ThresholdScheduler, _fused, _kernel_cache

bop_module = importlib.import_module("torchbop.optim.bop")  # the attribute torchbop.optim.bop is the function

requires_compiler = pytest.mark.skipif(
    _fused._environment_problem("cpu") is not None, reason="torch.compile cannot build CPU kernels here"
)
LARGE = _fused.AUTO_MIN_ENTRIES["cpu"]  # entries: the automatic choice compiles for tensors this large


def binary_param(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return nn.Parameter((torch.randint(0, 2, shape, generator=g) * 2 - 1).float())


def set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3


@pytest.fixture
def fresh_choice(monkeypatch, tmp_path):
    """Forget which kernels work, which were compiled (in this process and on disk) and which warnings were given,
    for this test only."""
    monkeypatch.setattr(_kernel_cache, "directory", lambda: tmp_path / "kernels")
    monkeypatch.setattr(_fused, "_support", {})
    monkeypatch.setattr(_fused, "_runners", {})
    monkeypatch.setattr(_fused, "_loaded", {})
    monkeypatch.setattr(_fused, "_warned", set())


def reference_run(params_init, steps, **kwargs):
    params = [nn.Parameter(p.detach().clone()) for p in params_init]
    opt = Bop(params, foreach=False, **kwargs)
    for i in range(steps):
        set_grads(params, i)
        opt.step()
    return params, opt


class TestAutomaticChoice:
    def test_small_tensors_take_the_eager_path_without_compiling(self, monkeypatch, fresh_choice):
        probes = []
        monkeypatch.setattr(_fused, "unavailable", lambda key, probe: probes.append(key))
        w = binary_param(LARGE - 1)
        opt = Bop([w])
        set_grads([w], 0)
        opt.step()
        assert probes == []

    @pytest.mark.usefixtures("fresh_choice")
    def test_without_a_cxx_compiler_one_warning_then_the_eager_path(self):
        with torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/c++")}):
            self._check_fallback()

    def _check_fallback(self):
        init = [binary_param(LARGE, seed=1), binary_param(300, 120, seed=2)]
        params = [nn.Parameter(p.detach().clone()) for p in init]
        opt = Bop(params, gamma=0.1, threshold=1e-4)
        with pytest.warns(UserWarning, match=r"Bop cannot use its fused kernel on cpu \(no working C\+\+ compiler"):
            set_grads(params, 0)
            opt.step()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once per process: the next steps are silent
            for i in range(1, 4):
                set_grads(params, i)
                opt.step()
        ref, ref_opt = reference_run(init, 4, gamma=0.1, threshold=1e-4)
        for p, q in zip(params, ref):
            assert torch.equal(p, q)
            assert torch.equal(opt.state[p]["exp_avg"], ref_opt.state[q]["exp_avg"])
        explicit = Bop([nn.Parameter(init[0].detach().clone())], fused=True)
        set_grads(explicit.param_groups[0]["params"], 0)
        with pytest.raises(RuntimeError, match=r"Bop\(fused=True\) cannot use its fused kernel on cpu: no working C"):
            explicit.step()

    @pytest.mark.usefixtures("fresh_choice")
    def test_a_failing_compilation_is_named_in_the_warning(self, monkeypatch):
        def broken(kernel):
            def run(*args):
                raise RuntimeError("InvalidCxxCompiler: g++ crashed")

            return run

        monkeypatch.setattr(_fused, "compiled", broken)
        w = binary_param(LARGE)
        opt = Bop2ndOrder([w])
        set_grads([w], 0)
        with pytest.warns(
            UserWarning,
            match=r"Bop2ndOrder cannot use .* \(RuntimeError: InvalidCxxCompiler: g\+\+ "
            r"crashed\); it uses the eager path",
        ):
            opt.step()

    @pytest.mark.usefixtures("fresh_choice")
    def test_a_kernel_that_rounds_otherwise_is_refused(self, monkeypatch):
        # lerp rounds m + gamma (g - m) differently (a fused multiply-add): not the reference, so not used
        def lerp_kernel(w, g, m, gamma, above_neg, above_pos):
            m.lerp_(g, gamma)
            flip = w * m > torch.where(w < 0, above_neg, above_pos)
            w.copy_(torch.where(flip, -w, w))
            return flip.sum()

        monkeypatch.setattr(_fused, "compiled", _fused.batched)  # run it eagerly: no compilation needed
        monkeypatch.setattr(bop_module, "_bop_kernel", lerp_kernel)
        w = binary_param(LARGE)
        opt = Bop([w])
        set_grads([w], 0)
        with pytest.warns(UserWarning, match="results differ from the reference"):
            opt.step()

    def test_other_devices_take_the_eager_path_silently(self):
        assert _fused._environment_problem("mps") == "no fused kernel for mps tensors"
        _fused.warn_once("Bop", "mps", "no fused kernel for mps tensors")  # no warning: nothing to fall back from


@requires_compiler
class TestCompilations:
    def test_one_compilation_per_kernel_whatever_the_schedule_groups_and_sizes(self):
        """Counted with Dynamo's graph counter: each kernel (Bop; Bop with nonfinite="mask"; Bop2ndOrder) is compiled
        once for fp32 CPU tensors, by the check of its first use; nothing after that compiles again."""
        graphs = torch._dynamo.utils.counters["stats"]
        known = set(_fused._support)
        start = graphs["unique_graphs"]
        conv, fc = binary_param(64, 64, 3, 3, seed=1), binary_param(300, 200, seed=2)
        opt = Bop([conv, fc], gamma=1e-2, threshold=1e-4)
        opt2 = Bop2ndOrder([binary_param(LARGE + 5, seed=3)], gamma=1e-2)
        masked = Bop([binary_param(LARGE + 7, seed=4)], nonfinite="mask")
        for o in (opt, opt2, masked):  # first steps: at most one compilation each
            set_grads(o.param_groups[0]["params"], 0)
            o.step()
        new = {key for key in _fused._support if key not in known}
        assert all(_fused._support[key] is None for key in new)  # every kernel compiled and matched the reference
        assert graphs["unique_graphs"] - start <= len(new) <= 3  # fewer when an earlier test compiled one
        after_first_steps = graphs["unique_graphs"]

        gamma = torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)
        tau = ThresholdScheduler(opt, lambda epoch: 2.0**-epoch)
        extra = [
            binary_param(333, 170, seed=5),
            binary_param(1, seed=6),
            nn.Parameter(binary_param(500, 200).t()),
            nn.Parameter(binary_param(40, 30, 5, 5).contiguous(memory_format=torch.channels_last)),
        ]
        opt.add_param_group({"params": extra, "tie_break": "keep"})
        params = [conv, fc, *extra]
        for i, (tie_break, nonfinite) in enumerate([("larq", "raise"), ("flip", "skip"), ("keep", "raise")]):
            opt.param_groups[0].update(tie_break=tie_break, nonfinite=nonfinite)
            set_grads(params, i + 1)
            opt.step()
            gamma.step()
            tau.step()
        opt2.param_groups[0].update(lr=0.5, sigma=0.5, eps=1e-6, threshold=0.1)
        opt2.add_param_group({"params": [binary_param(LARGE * 2, seed=7)]})
        set_grads([p for g in opt2.param_groups for p in g["params"]], 9)
        opt2.step()
        masked.param_groups[0]["lr"] = 0.5
        set_grads(masked.param_groups[0]["params"], 9)
        masked.step()
        assert graphs["unique_graphs"] == after_first_steps


def fused_and_eager(sizes, steps, gamma):
    """The same binary tensors (one per size) trained ``steps`` steps by ``Bop(fused=True)`` and by the eager path:
    ``(params, optimizer)`` of each."""
    params = [binary_param(n, seed=i) for i, n in enumerate(sizes)]
    twins = [nn.Parameter(p.detach().clone()) for p in params]
    fused, eager = Bop(params, gamma=gamma, fused=True), Bop(twins, gamma=gamma, fused=False)
    for step in range(steps):
        for tensors, optimizer in ((params, fused), (twins, eager)):
            set_grads(tensors, step)
            optimizer.step()
    return (params, fused), (twins, eager)


@requires_compiler
class TestBatchedCalls:
    """One compiled call takes ``ARITY`` tensors; more make several calls, fewer are padded with scratch tensors."""

    def sizes(self):
        # more than two calls' worth; equal sizes side by side (the kernel was compiled on unequal ones), 2-D and 4-D
        # shapes of one size, a channels-last tensor, and a tensor of two entries (the padding's size)
        return [
            (LARGE,),
            (LARGE,),
            (64, 64),
            (LARGE + 1,),
            (2,),
            (7, 5, 11, 13),
            (5005,),
            (LARGE * 3,),
            (13, 11, 7, 5),
            (LARGE,),
            (4099,),
            (LARGE + 3,),
            (9000,),
            (2, 4, 8, 64),
            (LARGE,),
            (6001,),
            (LARGE * 2,),
            (4097,),
        ]

    def run(self, fused, nonfinite="raise", steps=3):
        params = [binary_param(*shape, seed=i) for i, shape in enumerate(self.sizes())]
        params[5] = nn.Parameter(params[5].detach().contiguous(memory_format=torch.channels_last))
        opt = Bop(params, gamma=0.2, threshold=1e-4, fused=fused, nonfinite=nonfinite)
        flips = []
        for step in range(steps):
            set_grads(params, step)
            if nonfinite == "mask":
                params[3].grad[::5] = float("nan")
                params[10].grad[1] = float("inf")
            opt.step()
            flips.append([int(opt.state[p]["flips"]) for p in params])
        return params, opt, flips

    @pytest.mark.parametrize("nonfinite", ["raise", "mask"])
    def test_any_number_of_tensors_bit_identical_to_the_eager_path(self, monkeypatch, nonfinite):
        calls = []
        real_runner = _fused.runner

        def counting_runner(kernel, slot, scalars):
            run = real_runner(kernel, slot, scalars)
            return lambda slots, *s: (calls.append(len(slots)), run(slots, *s))[1]

        self.run(True, nonfinite, steps=1)  # the kernel's check of its first use (one more call), if not done yet
        monkeypatch.setattr(_fused, "runner", counting_runner)
        fused, fused_opt, fused_flips = self.run(True, nonfinite)
        eager, eager_opt, eager_flips = self.run(False, nonfinite)
        assert len(self.sizes()) > 2 * _fused.ARITY
        assert calls == [_fused.ARITY] * 3 * 3  # 18 tensors: three calls of ARITY slots per step
        assert fused_flips == eager_flips and sum(map(sum, fused_flips)) > 0
        for p, q in zip(fused, eager):
            assert torch.equal(p, q)
            assert torch.equal(fused_opt.state[p]["exp_avg"], eager_opt.state[q]["exp_avg"])
            if nonfinite == "mask":
                assert int(fused_opt.state[p]["nonfinite_entries"]) == int(eager_opt.state[q]["nonfinite_entries"])
        assert int(fused_opt.state[fused[3]]["nonfinite_entries"]) == (3 * LARGE // 5 + 3 if nonfinite == "mask" else 0)

    def test_padding_slots_do_not_touch_the_results(self):
        """Two steps of one tensor, then of ARITY + 1: every result as the eager path's, whatever ran in the padding
        slots in between."""
        for n in (1, _fused.ARITY + 1):
            (params, fused), (twins, eager) = fused_and_eager([LARGE + 16 * i for i in range(n)], steps=2, gamma=0.3)
            assert all(torch.equal(p, q) for p, q in zip(params, twins))
            assert [int(fused.state[p]["flips"]) for p in params] == [int(eager.state[q]["flips"]) for q in twins]

    def test_automatic_choice_puts_small_tensors_in_free_slots_only(self):
        """fused=None: a small tensor rides along in a call made for a large one, never gets a call of its own."""

        def leftover(sizes):
            params = [binary_param(n, seed=i) for i, n in enumerate(sizes)]
            set_grads(params, 0)
            _, rest = _fused.apply(
                bop_module._bop_kernel,
                params,
                [p.grad for p in params],
                [torch.zeros_like(p) for p in params],
                fused=None,
                hyperparameters=lambda dtype: (0.1, *bop_module.flip_thresholds(0.0, "larq", dtype)),
            )
            return rest

        assert leftover([LARGE, 100]) == []
        assert leftover([100, 200]) == [0, 1]
        assert leftover([LARGE] * _fused.ARITY + [100, 7]) == [8, 9]  # the one call is full
        assert leftover([LARGE] * _fused.ARITY + [100, LARGE, 7]) == []  # the second call has free slots

    @pytest.mark.usefixtures("fresh_choice")
    def test_without_precompiling_the_guarded_kernel_compiles_once(self, monkeypatch):
        """Where ``aot_compile`` is missing or fails, the guarded compiled function runs: compiled once, on the
        unequal example sizes, then reused by calls of any sizes (padding included), with the eager path's results."""
        real = _fused.compiled

        class Guarded:
            def __init__(self, function):
                self.function = function

            def __call__(self, *args):
                return self.function(*args)

            def aot_compile(self, *args):
                raise RuntimeError("no precompiling in this test")

        monkeypatch.setattr(_fused, "compiled", lambda kernel: Guarded(real(kernel)))
        graphs = torch._dynamo.utils.counters["stats"]
        start = graphs["unique_graphs"]
        self.run(True, steps=1)  # the first use compiles; then equal sizes side by side, and padding
        # all sizes different now: a kernel compiled on the first step's sizes would have to be compiled again
        (params, _), (twins, _) = fused_and_eager([LARGE + 3 * i for i in range(_fused.ARITY + 2)], steps=3, gamma=0.2)
        assert graphs["unique_graphs"] - start <= 1  # 0 if an earlier test compiled it the same way
        assert all(torch.equal(p, q) for p, q in zip(params, twins))


# Compiled kernels kept on disk: a new process loads what an earlier one compiled, and a bad file costs nothing.


@pytest.fixture
def kernels(monkeypatch, tmp_path):
    """An empty kernel folder, and a process that has compiled nothing yet."""
    folder = tmp_path / "kernels"
    monkeypatch.setattr(_kernel_cache, "directory", lambda: folder)
    monkeypatch.setattr(_fused, "_support", {})
    monkeypatch.setattr(_fused, "_runners", {})
    monkeypatch.setattr(_fused, "_loaded", {})
    monkeypatch.setattr(_fused, "_warned", set())
    return folder


def count_compilations(monkeypatch):
    calls = []
    real = _fused._compile
    monkeypatch.setattr(_fused, "_compile", lambda *args: (calls.append(args[0].__name__), real(*args))[1])
    return calls


@requires_compiler
def test_a_new_process_loads_the_kernel_instead_of_compiling_it(monkeypatch, kernels):
    compilations = count_compilations(monkeypatch)
    fused_and_eager([LARGE], steps=1, gamma=0.1)
    assert compilations == ["_bop_kernel"] and len(list(kernels.glob("*.kernel"))) == 1

    monkeypatch.setattr(_fused, "_support", {})  # what a new process knows: nothing, but the folder
    monkeypatch.setattr(_fused, "_runners", {})
    (params, fused), (twins, eager) = fused_and_eager([LARGE + 5, 3000, 2 * LARGE], steps=3, gamma=0.1)
    assert compilations == ["_bop_kernel"]  # loaded, not compiled again
    assert _fused._support[("bop", "cpu", torch.float32, torch.float32, torch.float32)] is None  # checked
    assert all(torch.equal(p, q) for p, q in zip(params, twins))
    assert [int(fused.state[p]["flips"]) for p in params] == [int(eager.state[q]["flips"]) for q in twins]
    assert sum(int(fused.state[p]["flips"]) for p in params) > 0


@requires_compiler
def test_a_loaded_kernel_that_fails_its_check_is_removed_and_compiled_afresh(monkeypatch, kernels):
    """A file that loads but computes something else (stale, damaged) must not send the process, and every later
    one, to the eager path: it is removed, the kernel compiled and checked again, with no warning."""
    compilations = count_compilations(monkeypatch)
    removed = []
    real_load, real_remove = _kernel_cache.load, _kernel_cache.remove

    def wrong_once(key):  # the first load returns a kernel that skips the update and flips nothing
        if removed:
            return real_load(key)
        return lambda slots, *scalars: torch.zeros(len(slots), dtype=torch.int64)

    monkeypatch.setattr(_kernel_cache, "load", wrong_once)
    monkeypatch.setattr(_kernel_cache, "remove", lambda key: (removed.append(key), real_remove(key)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (params, fused), (twins, eager) = fused_and_eager([LARGE, 2 * LARGE], steps=2, gamma=0.1)
    assert len(removed) == 1 and compilations == ["_bop_kernel"]
    assert _fused._support[("bop", "cpu", torch.float32, torch.float32, torch.float32)] is None
    assert all(torch.equal(p, q) for p, q in zip(params, twins))
    assert sum(int(fused.state[p]["flips"]) for p in params) > 0


def test_an_unreadable_file_is_removed_and_the_kernel_compiled_again(kernels):
    key = (_fused.batched, 2, (torch.device("cpu"), torch.float32))
    path = _kernel_cache._path(key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a kernel")
    assert _kernel_cache.load(key) is None
    assert not path.exists()


def test_a_folder_that_cannot_be_written_costs_only_the_saving(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the folder would be")
    monkeypatch.setattr(_kernel_cache, "directory", lambda: blocker / "kernels")

    class Precompiled:
        def save_compiled_function(self, path):
            raise AssertionError("no folder to save into")

    _kernel_cache.save((_fused.batched, 1), Precompiled())  # no exception
    assert _kernel_cache.load((_fused.batched, 1)) is None


def test_off_where_inductor_caches_are_off(kernels):
    import torch._inductor.config

    saved = []

    class Precompiled:
        def save_compiled_function(self, path):
            saved.append(path)

    _kernel_cache.save((_fused.batched, 1), Precompiled())
    assert len(saved) == 1
    with torch._inductor.config.patch(force_disable_caches=True):
        _kernel_cache.save((_fused.batched, 2), Precompiled())
        assert len(saved) == 1 and _kernel_cache.load((_fused.batched, 1)) is None


def test_file_names_follow_what_shapes_the_code_and_nothing_else():
    cpu = torch.device("cpu")
    key = (_fused.batched, 2, (cpu, torch.float32), 8)
    names = {
        _kernel_cache._digest(k)
        for k in [
            key,
            (_fused.batched, 1, (cpu, torch.float32), 8),
            (_fused.batched, 2, (cpu, torch.float64), 8),
            (_fused.batched, 2, (cpu, torch.float32), 4),
            (_fused.compiled, 2, (cpu, torch.float32), 8),
        ]
    }
    assert len(names) == 5
    program = (
        "import torch; from torchbop.optim import _fused, _kernel_cache; "
        "print(_kernel_cache._digest((_fused.batched, 2, (torch.device('cpu'), torch.float32), 8)))"
    )
    other = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert other.stdout.strip() == _kernel_cache._digest(key)  # the same name in another process
