"""The GPU check: everything a first CUDA machine should run, in one command, in under 8 minutes, into one folder.

    python benchmarks/gpu_check.py RESULTS_DIR            # or: make gpu-check GPU_CHECK_OUT=RESULTS_DIR

Needs torch (with CUDA), lightning, pyyaml, tensorboard; installs nothing and reaches no network (torchbop is
imported from ``src/`` when it is not installed). pytest is needed only for the ``tests`` part: when the machine
lacks it, ``--bundle-pytest build/pydeps`` (run where pytest is installed) copies it and its pure-Python
dependencies into a folder to carry along; the check adds ``build/pydeps`` to the path when it exists (or
``--extra-path DIR``). Without pytest that part is recorded as skipped and the rest runs.

Parts, in order, each in its own process with its own timeout, all under one global deadline (``--budget``, 465 s
by default: a part that would start too late is recorded as skipped, a part that overruns is killed and recorded as
a timeout, and the check goes on):

==================  ============================================================================================
``env``             torch, CUDA, Lightning and Python versions, the GPU, ``nvidia-smi``.
``smoke``           without pytest: 20-step training runs of BinaryNet on the device (fp32, bf16-mixed,
                    ``compile: true``); host syncs counted per training step in a window of steps that Lightning
                    does not log, eager and compiled (CUDA's sync debug mode; on CPU the host reads of tensor
                    values); ``DeviceLoader`` on the device against the CPU, bit for bit; Bop's reference, foreach
                    and fused paths on the device, bit for bit.
``timebox``         the ``cifar10`` recipe at full width with ``compile: true`` and no progress bar, for a fixed
                    wall budget (``--timebox``, 130 s of training), then tested: training images/s (overall, and
                    in the epochs after the first, which hold no compilation), epochs completed, test accuracy,
                    and what 500 epochs would take at that rate. Real CIFAR-10 when found (``--data-dir``,
                    ``$TORCHBOP_DATA``, ``~/.cache/torchbop``), else a synthetic, learnable CIFAR-shaped set (said
                    in the summary: its accuracy only shows that the network learns). ``--set KEY=VALUE`` changes
                    the recipe (e.g. ``precision=bf16-mixed``). Checkpoints are deleted afterwards (100+ MB); the
                    logs stay.
``tests``           ``pytest -m gpu tests`` (every test marked ``gpu``: Bop's paths on CUDA, the loader, ...; this
                    check's own CUDA tests are left out, the smoke part ran them), junit XML in ``tests.xml``.
``optimizer_step``  ``benchmarks/optimizer_step.py --device cuda``
``train_step``      ``benchmarks/train_step.py --device cuda``
``data_pipeline``   ``benchmarks/data_pipeline.py --device cuda``
``lightning_overhead``  ``benchmarks/lightning_overhead.py --device cuda`` at full width, eager and compiled with
                    CUDA graphs (``mode="reduce-overhead"``): the plain PyTorch loop against Lightning's, per step.
==================  ============================================================================================

A benchmark's flags that its script no longer takes are left out (and said so), so a changed benchmark still runs.
Each part writes ``<part>.log`` (its whole output); ``summary.json`` and ``summary.md`` list every part's status
(ok, failed, timeout, skipped), seconds and numbers, and are rewritten after every part, so a check killed from
outside still leaves what it did.

Without CUDA (or with ``--dry``) the same parts run on the CPU at tiny sizes (``--device cpu``, BinaryNet 1/32 wide,
a few steps, a 10 s time box, compilation with TorchDynamo's ``eager`` backend instead of inductor, Bop's fused
kernel left out), in under 2 minutes on a 2-core machine: the code paths the GPU run takes, so that it works the
first time there. ``--dry-budget`` sets the dry run's total (110 s); ``--tiny`` shrinks the parts further and runs
fewer smoke checks (what ``tests/test_gpu_check.py`` runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
DEFAULT_EXTRA_PATH = ROOT / "build" / "pydeps"
PARTS = ("env", "smoke", "timebox", "tests", "optimizer_step", "train_step", "data_pipeline", "lightning_overhead")
GPU_BUDGET_S = 465.0
DRY_BUDGET_S = 110.0
MIN_PART_S = {"gpu": 20.0, "dry": 8.0}  # a part is not started with less time than this left


# ----------------------------------------------------------------------------------------------------------------
# running parts
# ----------------------------------------------------------------------------------------------------------------
def _env(extra_path: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(SRC)] + ([str(extra_path)] if extra_path is not None else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> tuple[int | None, float]:
    """Run ``cmd`` with stdout and stderr into ``log``; kill its whole process group after ``timeout`` seconds.

    Returns ``(returncode, seconds)``; the return code is ``None`` after a timeout.
    """
    start = time.perf_counter()
    with open(log, "w") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            rc = None
            for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            out.write(f"\n[gpu_check] killed after {timeout:.0f} s\n")
    return rc, time.perf_counter() - start


def supported_flags(script: Path, env: dict[str, str]) -> set[str] | None:
    """The ``--flags`` a benchmark takes: read from its ``add_argument("--...")`` calls, else from its ``--help``
    (None when neither works)."""
    try:
        found = set(re.findall(r"""add_argument\(\s*["'](--[a-zA-Z][\w-]*)["']""", script.read_text()))
    except OSError:
        found = set()
    if found:
        return found
    try:
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60,
                             cwd=ROOT, env=env)
    except (subprocess.TimeoutExpired, OSError):
        return None
    if out.returncode != 0:
        return None
    return set(re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", out.stdout))


def keep_supported(args: list[str], flags: set[str] | None) -> tuple[list[str], list[str]]:
    """Drop the flags (and their values) a benchmark does not take; returns (kept, dropped)."""
    if flags is None:
        return args, []
    kept, dropped, i = [], [], 0
    while i < len(args):
        flag = args[i]
        has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
        chunk = args[i:i + 2] if has_value else args[i:i + 1]
        (kept if flag in flags else dropped).extend(chunk)
        i += len(chunk)
    return kept, dropped


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


class Check:
    """The orchestrator: runs the parts in order under one deadline and keeps the summary files current."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.results
        self.out.mkdir(parents=True, exist_ok=True)
        self.dry: bool = args.dry
        self.device = args.device
        self.tiny = self.dry and args.tiny
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget
        extra = args.extra_path if args.extra_path is not None else (
            DEFAULT_EXTRA_PATH if DEFAULT_EXTRA_PATH.is_dir() else None)
        self.extra_path = extra
        self.env = _env(extra)
        self.parts: dict[str, dict[str, Any]] = {}
        self.started_at = datetime.datetime.now().isoformat(timespec="seconds")

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def record(self, name: str, **entry: Any) -> None:
        self.parts[name] = entry
        self.write_summary()

    def write_summary(self) -> None:
        summary = {
            "mode": "dry (CPU)" if self.dry else "gpu", "device": self.device, "started": self.started_at,
            "seconds": round(time.perf_counter() - self.start, 1), "budget_s": self.args.budget,
            "parts": self.parts,
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (self.out / "summary.md").write_text(render_markdown(summary))

    def run_part(self, name: str, cmd: list[str], timeout: float, numbers: Any = None,
                 ok_codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
        """Run one subprocess part within the deadline; record status, seconds, numbers and the log's tail."""
        left = self.remaining()
        if left < MIN_PART_S["dry" if self.dry else "gpu"]:
            entry = {"status": "skipped", "note": f"global budget spent ({left:.0f} s left)"}
            self.record(name, **entry)
            return entry
        timeout = min(timeout, left)
        log = self.out / f"{name}.log"
        print(f"[gpu_check] {name} (timeout {timeout:.0f} s) ...", flush=True)
        rc, seconds = run_logged(cmd, log, timeout, self.env)
        status = "timeout" if rc is None else ("ok" if rc in ok_codes else f"failed (exit {rc})")
        entry: dict[str, Any] = {"status": status, "seconds": round(seconds, 1), "timeout_s": round(timeout),
                                 "log": log.name}
        if numbers is not None:
            try:
                found = numbers()
            except Exception as error:  # a missing or partial result file: the log says why
                found = {"unreadable": f"{type(error).__name__}: {error}"}
            if found:
                entry["numbers"] = found
        entry["tail"] = tail(log, 30 if status == "ok" else 40)
        print(f"[gpu_check] {name}: {status} in {seconds:.0f} s", flush=True)
        self.record(name, **entry)
        return entry

    # -- the parts -----------------------------------------------------------------------------------------------
    def part_env(self) -> None:
        started = time.perf_counter()
        info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                                "extra_path": str(self.extra_path) if self.extra_path else None}
        try:
            import torch

            info["torch"] = torch.__version__
            info["cuda_available"] = torch.cuda.is_available()
            info["torch_cuda"] = torch.version.cuda
            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                info["gpu"] = props.name
                info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
                info["capability"] = f"{props.major}.{props.minor}"
                info["bf16_supported"] = torch.cuda.is_bf16_supported()
            info["cpu_threads"] = torch.get_num_threads()
        except Exception as error:
            info["torch"] = f"import failed: {error}"
        import importlib.metadata

        for package in ("lightning", "pyyaml", "tensorboard", "matplotlib", "numpy", "pytest"):
            try:  # the installed version, without the seconds of importing it
                info[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                info[package] = None
        info["pytest_in_subprocess"] = self.pytest_available()
        smi = shutil.which("nvidia-smi")
        if smi:
            try:
                info["nvidia_smi"] = subprocess.run([smi], capture_output=True, text=True, timeout=15).stdout[-3000:]
            except (subprocess.TimeoutExpired, OSError) as error:
                info["nvidia_smi"] = f"failed: {error}"
        (self.out / "env.json").write_text(json.dumps(info, indent=2))
        self.record("env", status="ok", seconds=round(time.perf_counter() - started, 1), numbers=info)

    def pytest_available(self) -> bool:
        try:
            return subprocess.run([sys.executable, "-c", "import pytest"], env=self.env, timeout=60,
                                  capture_output=True).returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            return False

    def worker(self, kind: str, extra: list[str]) -> list[str]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--device", self.device]
        if self.dry:
            cmd.append("--dry")
        if self.tiny:
            cmd.append("--tiny")
        if self.args.data_dir:
            cmd += ["--data-dir", str(self.args.data_dir)]
        return cmd + extra

    def part_smoke(self) -> None:
        result = self.out / "smoke.json"
        self.run_part("smoke", self.worker("smoke", ["--json", str(result)]), timeout=75,
                      numbers=lambda: json.loads(result.read_text()))

    def part_tests(self) -> None:
        if not self.pytest_available():
            self.record("tests", status="skipped", note="pytest is not installed here: carry build/pydeps (made "
                        "by `python benchmarks/gpu_check.py --bundle-pytest build/pydeps` on a machine with "
                        "pytest) or pass --extra-path; the smoke part ran the essential checks without it")
            return
        xml = self.out / "tests.xml"
        # the smoke part has run this check's own CUDA tests (tests/test_gpu_check.py) already
        targets = (["tests", "--ignore=tests/test_gpu_check.py"] if not self.dry else
                   ["tests/data/test_loader.py", "tests/test_gpu_check.py", "tests/training/test_compiled_step.py"])
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "-rfEs",
               "--continue-on-collection-errors",
               f"--junitxml={xml}", *targets]
        # exit 5: no test collected (a dry run's files may hold none marked gpu)
        self.run_part("tests", cmd, timeout=90, numbers=lambda: junit_numbers(xml),
                      ok_codes=(0, 5))

    def part_timebox(self) -> None:
        result = self.out / "timebox.json"
        seconds = self.args.timebox
        # the training budget shrinks to what the deadline leaves (setup, compilation and the test need ~60 s)
        left = self.remaining() - (25 if self.dry else 75)
        if left < seconds:
            seconds = max(left, 5.0)
        cmd = self.worker("timebox", ["--json", str(result), "--out", str(self.out / "timebox"),
                                      "--seconds", f"{seconds:.0f}", *sum((["--set", s] for s in self.args.set), [])])
        self.run_part("timebox", cmd, timeout=seconds + (40 if self.dry else 90),
                      numbers=lambda: json.loads(result.read_text()))

    def part_benchmark(self, name: str, script: str, gpu_args: list[str], dry_args: list[str],
                       tiny_args: list[str] | None = None, timeout: float = 60, numbers: Any = None) -> None:
        path = ROOT / "benchmarks" / script
        if not path.is_file():
            self.record(name, status="skipped", note=f"{path.relative_to(ROOT)} not found")
            return
        wanted = ["--device", self.device] + (gpu_args if not self.dry else ["--threads", "1"] + (
            tiny_args if self.tiny and tiny_args is not None else dry_args))
        args, dropped = keep_supported(wanted, supported_flags(path, self.env))
        entry = self.run_part(name, [sys.executable, str(path), *args], timeout=timeout, numbers=numbers)
        if dropped:
            entry["note"] = f"flags the benchmark does not take, left out: {' '.join(dropped)}"
            self.record(name, **entry)

    def run(self, parts: list[str]) -> int:
        print(f"[gpu_check] {'dry run on CPU' if self.dry else 'GPU run'}; results in {self.out}; budget "
              f"{self.args.budget:.0f} s", flush=True)
        for name in parts:
            try:
                if name == "env":
                    self.part_env()
                elif name == "smoke":
                    self.part_smoke()
                elif name == "tests":
                    self.part_tests()
                elif name == "timebox":
                    self.part_timebox()
                elif name == "optimizer_step":
                    self.part_benchmark(name, "optimizer_step.py", ["--rounds", "8", "--warmup", "3"],
                                        ["--width", "0.0625", "--rounds", "3", "--warmup", "1", "--no-fused"],
                                        ["--width", "0.03125", "--rounds", "1", "--warmup", "1", "--no-fused"],
                                        timeout=35)
                elif name == "train_step":
                    self.part_benchmark(name, "train_step.py", ["--widths", "1.0,0.25", "--steps", "8",
                                                                "--warmup", "3"],
                                        ["--widths", "0.0625", "--steps", "3", "--warmup", "1"],
                                        ["--widths", "0.03125", "--steps", "1", "--warmup", "1"],
                                        timeout=45)
                elif name == "data_pipeline":
                    self.part_benchmark(name, "data_pipeline.py", ["--images", "20000", "--repeats", "2"],
                                        ["--images", "2000", "--baseline-images", "500", "--repeats", "1",
                                         "--batch-sizes", "50"],
                                        ["--images", "500", "--baseline-images", "100", "--repeats", "1",
                                         "--batch-sizes", "50"], timeout=30)
                elif name == "lightning_overhead":
                    result = self.out / "lightning_overhead.json"
                    self.part_benchmark(
                        name, "lightning_overhead.py",
                        ["--model", "binarynet", "--width", "1.0", "--compile", "none,reduce-overhead",
                         "--steps", "100", "--warmup", "20", "--repeats", "1", "--json", str(result)],
                        ["--model", "tiny", "--compile", "none", "--steps", "5", "--warmup", "2", "--repeats", "1",
                         "--json", str(result)],
                        ["--model", "tiny", "--compile", "none", "--steps", "5", "--warmup", "2", "--repeats", "1",
                         "--json", str(result)],
                        timeout=120, numbers=lambda: json.loads(result.read_text())["rows"])
                else:
                    self.record(name, status="skipped", note="unknown part")
            except Exception:  # the check itself failed at this part: record it and go on
                self.record(name, status="failed (gpu_check error)", tail=traceback.format_exc()[-3000:])
        self.write_summary()
        bad = [n for n, p in self.parts.items() if not (p["status"] == "ok" or p["status"] == "skipped")]
        print(f"[gpu_check] done in {time.perf_counter() - self.start:.0f} s; "
              + (f"not ok: {', '.join(bad)}" if bad else "every part ok or skipped")
              + f"; see {self.out / 'summary.md'}", flush=True)
        return 1 if bad else 0


def junit_numbers(xml: Path) -> dict[str, Any]:
    root = ET.parse(xml).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    numbers = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failing.append(f"{case.get('classname')}::{case.get('name')}")
    numbers["failing"] = failing[:30]
    return numbers


def render_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# GPU check ({summary['mode']}, device {summary['device']})", "",
             f"Started {summary['started']}, {summary['seconds']} s of a {summary['budget_s']:.0f} s budget.", "",
             "| part | status | seconds | key numbers |", "|---|---|---|---|"]
    for name, part in summary["parts"].items():
        lines.append(f"| {name} | {part['status']} | {part.get('seconds', '')} | {key_numbers(name, part)} |")
    for name, part in summary["parts"].items():
        lines += ["", f"## {name}: {part['status']}", ""]
        if part.get("note"):
            lines += [part["note"], ""]
        if part.get("numbers") is not None and name not in ("env",):
            lines += ["```json", json.dumps(part["numbers"], indent=1, default=str)[:6000], "```", ""]
        elif name == "env":
            env = {k: v for k, v in part.get("numbers", {}).items() if k != "nvidia_smi"}
            lines += ["```json", json.dumps(env, indent=1), "```", ""]
        if part.get("tail"):
            lines += [f"Last lines of `{part.get('log', '')}`:", "", "```", part["tail"], "```"]
    return "\n".join(lines) + "\n"


def key_numbers(name: str, part: dict[str, Any]) -> str:
    n = part.get("numbers") or {}
    try:
        if name == "env":
            return f"{n.get('gpu', 'no GPU')}, torch {n.get('torch')}, lightning {n.get('lightning')}"
        if name == "tests" and "tests" in n:
            return (f"{n['tests']} tests, {n['failures']} failures, {n['errors']} errors, {n['skipped']} "
                    "skipped")
        if name == "timebox" and "images_per_s" in n:
            return (f"{n['images_per_s']:,.0f} img/s ({n.get('steady_images_per_s', float('nan')):,.0f} after "
                    f"epoch 1), {n['epochs_completed']} epochs, test acc {n['test_acc']:.4f} ({n['data']})")
        if name == "smoke" and "checks" in n:
            failed = [c for c, r in n["checks"].items() if not r.get("ok")]
            syncs = n.get("host_syncs_per_step", {})
            return (f"{len(n['checks']) - len(failed)}/{len(n['checks'])} ok"
                    + (f" (failed: {', '.join(failed)})" if failed else "")
                    + (f"; syncs/step {syncs}" if syncs else ""))
        if name == "lightning_overhead" and isinstance(n, list):
            return "; ".join(f"{r['compile']}: plain {r['plain_ms']:.2f} ms, Lightning {r['lightning_ms']:.2f} ms "
                             f"({r['lightning_images_per_s']:,.0f} img/s)" for r in n)
    except (KeyError, TypeError, ValueError):
        pass
    return part.get("note", "")[:80] if part.get("status") == "skipped" else "see below"


# ----------------------------------------------------------------------------------------------------------------
# workers (run in their own process by the parts above)
# ----------------------------------------------------------------------------------------------------------------
def synthetic_cifar(n: int, seed: int) -> tuple[Any, Any]:
    """uint8 CIFAR-shaped images of noise with a bright class-dependent square: learnable within an epoch."""
    import torch

    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = (torch.rand(n, 3, 32, 32, generator=g) * 120).to(torch.uint8)
    for c in range(10):
        row, col = 4 + 6 * (c // 5) * 2, 2 + 6 * (c % 5)
        images[labels == c, c % 3, row:row + 6, col:col + 6] = 255
    return images, labels


def cifar_data(data_dir: str | None, n_train: int | None = None, n_test: int | None = None
               ) -> tuple[dict[str, Any], str, str | None]:
    """Real CIFAR-10 when found, else the synthetic set; returns ``(data, source, why not real)``."""
    from torchbop.data import DatasetNotFoundError, load_cifar10

    why = None
    try:
        data = {"train": load_cifar10(data_dir, train=True), "test": load_cifar10(data_dir, train=False)}
        source = "real CIFAR-10"
    except (DatasetNotFoundError, OSError, ValueError) as error:
        data = {"train": synthetic_cifar(n_train or 50_000, 1), "test": synthetic_cifar(n_test or 10_000, 2)}
        source = "SYNTHETIC data (CIFAR-10 not found)"
        why = str(error)[:600]
    if n_train is not None:
        data["train"] = (data["train"][0][:n_train], data["train"][1][:n_train])
    if n_test is not None:
        data["test"] = (data["test"][0][:n_test], data["test"][1][:n_test])
    return data, source, why


def _dry_settings(dry: bool) -> None:
    """Dry runs compile with TorchDynamo's ``eager`` backend (the compiled path's code, without minutes of C++) and
    use one thread (tiny models on a small, shared CPU run many times faster so)."""
    if dry:
        import torch

        from torchbop.training.module import BinaryClassifier

        BinaryClassifier.compile_options = {"backend": "eager"}
        torch.set_num_threads(1)


def worker_timebox(args: argparse.Namespace) -> None:
    import lightning as L
    import torch

    from torchbop.training import load_recipe, train
    from torchbop.training.callbacks import WallClockBudget
    from torchbop.training.module import BinaryClassifier

    _dry_settings(args.dry)
    cuda = args.device.startswith("cuda")
    overrides = [f"out={args.out}", "progress_bar=false", "compile=true", f"accelerator={'gpu' if cuda else 'cpu'}",
                 "devices=1"]
    if args.dry:
        overrides += ["model_kwargs.width=0.03125", "eval_batch_size=500", "log_every_n_steps=10"]
    overrides += args.set
    config = load_recipe("cifar10", overrides)
    n_train, n_test = (None, None) if not args.dry else ((500, 250) if args.tiny else (2000, 500))
    data, source, why = cifar_data(args.data_dir, n_train, n_test)

    class EpochTimes(L.Callback):
        """Seconds and images of each epoch's training batches (device synced at both ends, as Throughput)."""

        def __init__(self) -> None:
            self.epochs: list[tuple[float, int]] = []
            self._start = 0.0
            self._images = 0

        def on_train_epoch_start(self, trainer, pl_module):
            if pl_module.device.type == "cuda":
                torch.cuda.synchronize(pl_module.device)
            self._start, self._images = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self._images += len(batch[1])
            if batch_idx + 1 >= trainer.num_training_batches or trainer.should_stop:
                if pl_module.device.type == "cuda":
                    torch.cuda.synchronize(pl_module.device)
                self.epochs.append((time.perf_counter() - self._start, self._images))

    budget = WallClockBudget(args.seconds)
    times = EpochTimes()
    started = time.perf_counter()
    result = train(config, data=data, callbacks=[budget, times], overwrite=True)
    steady = times.epochs[1:]
    steady_rate = (sum(i for _, i in steady) / sum(s for s, _ in steady)) if steady else float("nan")
    removed = 0
    for ckpt in Path(args.out, "checkpoints").glob("*.ckpt"):
        removed += ckpt.stat().st_size
        ckpt.unlink()
    images_per_epoch = len(data["train"][1]) // config.batch_size * config.batch_size
    report = {
        "data": source,
        "data_note": why,
        "train_images": len(data["train"][1]),
        "config": {k: getattr(config, k) for k in ("model", "model_kwargs", "batch_size", "precision", "compile",
                                                   "gamma", "threshold", "lr", "epochs", "log_every_n_steps")},
        "compile_options": BinaryClassifier.compile_options,
        "budget_s": args.seconds,
        "training_s": round(budget.elapsed, 1),
        "stopped": budget.stopped,
        "epochs_completed": budget.epochs_completed,
        "global_step": result["global_step"],
        "epochs_fraction": round(result["train_images"] / images_per_epoch, 3) if images_per_epoch else None,
        "images_per_s": result["train_images_per_s"],
        "steady_images_per_s": steady_rate,
        "epoch_train_seconds": [round(s, 3) for s, _ in times.epochs[:20]],
        "test_acc": result["test_acc"],
        "test_loss": result["test_loss"],
        "val_acc": result.get("val_acc"),
        "device": result["device"],
        "wall_s": round(time.perf_counter() - started, 1),
        "checkpoint_bytes_deleted": removed,
        "minutes_for_500_epochs_at_steady_rate": round(500 * images_per_epoch / steady_rate / 60, 1)
        if steady and steady_rate > 0 else None,
    }
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


def worker_smoke(args: argparse.Namespace) -> None:
    """The essential GPU checks without pytest (see the module docstring); writes ``--json``."""
    import torch

    _dry_settings(args.dry)
    device = torch.device(args.device)
    checks: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {"device": str(device), "checks": checks}

    def check(name: str, fn: Any) -> None:
        started = time.perf_counter()
        try:
            result = fn() or {}
            checks[name] = {"ok": True, **result}
        except Exception as error:
            checks[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:1500],
                            "traceback": traceback.format_exc()[-2500:]}
        checks[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"[smoke] {name}: {'ok' if checks[name]['ok'] else 'FAILED'} ({checks[name]['seconds']} s)",
              flush=True)
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))

    width = 0.03125 if args.dry else 0.0625
    steps = 6 if args.tiny else (10 if args.dry else 20)
    check("loader_matches_cpu", lambda: smoke_loader(device))
    check("bop_paths_identical", lambda: smoke_bop_paths(device, fused=not args.dry))
    # tiny (the unit test's dry run): one training run only; tests/training/test_compiled_step.py covers the syncs
    variants = [("train_fp32", {}), ("train_bf16", {"precision": "bf16-mixed"}), ("train_compile", {"compile": True})]
    if args.tiny:
        variants = variants[2:]
    for name, changes in variants:
        check(name, lambda changes=changes: smoke_train(device, width, steps, changes))
    syncs: dict[str, Any] = {}
    for compile_ in ((False, True) if not args.dry else (True,) if not args.tiny else ()):
        label = "compile" if compile_ else "eager"
        check(f"host_syncs_{label}", lambda compile_=compile_: syncs.setdefault(
            label, smoke_host_syncs(device, width, compile_, steps=14 if args.dry else 24)))
    report["host_syncs_per_step"] = {k: v["per_step"] for k, v in syncs.items()}
    Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if not all(c["ok"] for c in checks.values()):
        sys.exit(1)


def _smoke_config(device: Any, width: float, steps: int, out: str, **changes: Any) -> Any:
    from torchbop.training import TrainConfig

    base = dict(name="smoke", model="binarynet", model_kwargs={"width": width}, dataset="cifar10", augment=True,
                batch_size=50, eval_batch_size=200, epochs=1, gamma=1e-3, threshold=1e-6, lr=0.01,
                accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, limit_train_batches=steps,
                limit_eval_batches=2, progress_bar=False, log_every_n_steps=100, out=out)
    return TrainConfig(**{**base, **changes})


def smoke_train(device: Any, width: float, steps: int, changes: dict[str, Any]) -> dict[str, Any]:
    """``steps`` training steps of BinaryNet on the device: finite loss, binary weights, flips, the test runs."""
    import lightning as L
    import torch

    from torchbop.nn import named_binary_parameters
    from torchbop.training import train

    class Keep(L.Callback):
        module = None
        flips = 0
        optimizers: list[dict[str, Any]] = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.flips = int(pl_module.flip_counter.epoch_total)

        def on_train_end(self, trainer, pl_module):
            Keep.module = pl_module
            opt = trainer.optimizers[0]
            Keep.optimizers = [{"optimizer": type(o).__name__, **{k: o.param_groups[0].get(k) for k in
                                                               ("fused", "foreach", "nonfinite")}}
                               for o in getattr(opt, "optimizers", [opt])]

    keep = Keep()
    with tempfile.TemporaryDirectory() as out:
        data = {"train": synthetic_cifar(50 * steps, 1), "test": synthetic_cifar(400, 2)}
        result = train(_smoke_config(device, width, steps, out, **changes), data=data, callbacks=[keep],
                       loggers=False)
    model = Keep.module.model
    assert result["global_step"] == steps, result["global_step"]
    assert math.isfinite(result["test_loss"]), result["test_loss"]
    for name, w in named_binary_parameters(model):
        assert w.device.type == device.type, (name, w.device)
        assert bool(((w == 1) | (w == -1)).all()), f"{name} is not binary"
    assert keep.flips > 0, "no weight flipped"
    return {"test_acc": result["test_acc"], "test_loss": result["test_loss"], "flips": keep.flips,
            "images_per_s": result["train_images_per_s"], "device": result["device"],
            "optimizers": Keep.optimizers}


def smoke_host_syncs(device: Any, width: float, compile_: bool, steps: int = 24) -> dict[str, Any]:
    """Host syncs per training step in a window of steps that Lightning does not log (steps 4 to steps-2).

    CUDA: ``torch.cuda.set_sync_debug_mode("warn")`` turns every synchronizing call into a warning, counted with
    the Python line that made it. CPU: nothing syncs, so the Python-level reads of a tensor's value on the host
    (``.item()``, ``bool()``, ``int()``, ``float()``, ``tolist()``, ``nonzero()``) are counted instead, by wrapping
    those tensor methods during the window; reads of the optimizers' step counters (host tensors in a GPU run too)
    are left out.
    """
    import collections
    import warnings

    import lightning as L
    import torch

    from torchbop.training import train

    first, last = 4, steps - 2
    counts: collections.Counter = collections.Counter()
    methods = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")

    def where() -> str:
        for frame in reversed(traceback.extract_stack()[:-2]):
            if "/torch/" not in frame.filename.replace("\\", "/"):
                return f"{Path(frame.filename).name}:{frame.lineno}"
        return "?"

    def wrap(on: bool) -> None:
        for name in methods:
            if on and name not in torch.Tensor.__dict__:
                original = getattr(torch._C.TensorBase, name)

                def wrapper(tensor, *a, _original=original, **k):
                    if not getattr(tensor, "_gpu_check_host", False):
                        counts[where()] += 1
                    return _original(tensor, *a, **k)

                setattr(torch.Tensor, name, wrapper)
            elif not on and name in torch.Tensor.__dict__:
                delattr(torch.Tensor, name)

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            on = first <= batch_idx < last
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn" if on else 0)
                return
            if on:  # optimizer step counters live on the host in a GPU run too
                for opt in getattr(trainer.optimizers[0], "optimizers", trainer.optimizers):
                    for state in opt.state.values():
                        if isinstance(state.get("step"), torch.Tensor):
                            state["step"]._gpu_check_host = True
            wrap(on)

        def on_train_epoch_end(self, trainer, pl_module):
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
            else:
                wrap(False)

    with tempfile.TemporaryDirectory() as out:
        data = {"train": synthetic_cifar(50 * steps, 1), "test": synthetic_cifar(200, 2)}
        config = _smoke_config(device, width, steps, out, compile=compile_, limit_eval_batches=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                train(config, data=data, callbacks=[Window()], loggers=False)
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode(0)
                else:
                    wrap(False)
        for w in caught:
            if "synchroniz" in str(w.message):
                counts[f"{Path(w.filename).name}:{w.lineno}"] += 1
    total = sum(counts.values())
    what = ("CUDA syncs" if device.type == "cuda" else
            "host reads of tensor values on CPU (CPU-only shortcuts included, e.g. the quantizers' NaN check)")
    return {"per_step": round(total / (last - first), 2), "window_steps": last - first, "total": total,
            "counted": what, "where": dict(counts.most_common(12))}


def smoke_loader(device: Any) -> dict[str, Any]:
    """DeviceLoader on the device yields the CPU's batches bit for bit (shuffled, augmented)."""
    import torch

    from torchbop.data import DeviceLoader

    images, labels = synthetic_cifar(300, 3)
    batches = {}
    for where in ("cpu", device):
        loader = DeviceLoader(images, labels, 64, augment=True, seed=5, device=where, drop_last=True)
        loader.set_epoch(3)
        batches[str(where)] = [(x.cpu(), y.cpu()) for x, y in loader]
    a, b = batches["cpu"], batches[str(device)]
    assert len(a) == len(b) == 4
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb), "batches differ"
    return {"batches": len(a)}


def smoke_bop_paths(device: Any, fused: bool) -> dict[str, Any]:
    """Bop's reference, foreach and fused paths give the same m, weights and flip counts on the device."""
    import torch

    from torchbop.optim import Bop

    g = torch.Generator().manual_seed(0)
    shapes = [(64, 3, 3, 3), (128, 64, 3, 3), (10, 512)]
    weights = [(torch.randint(0, 2, s, generator=g) * 2 - 1).float() for s in shapes]
    grads = [[torch.randn(s, generator=g) * 1e-2 for s in shapes] for _ in range(4)]
    paths = {"reference": {"foreach": False}, "foreach": {"foreach": True}}
    if fused:
        paths["fused"] = {"fused": True}
    results = {}
    for name, kwargs in paths.items():
        params = [torch.nn.Parameter(w.clone().to(device)) for w in weights]
        opt = Bop(params, gamma=0.3, threshold=1e-3, **kwargs)
        flips = []
        for step in grads:
            for p, gr in zip(params, step):
                p.grad = gr.to(device)
            opt.step()
            flips.append([int(opt.state[p]["flips"]) for p in params])
        results[name] = ([p.detach().cpu() for p in params], [opt.state[p]["exp_avg"].cpu() for p in params], flips)
    ref = results["reference"]
    for name, (w, m, f) in results.items():
        assert all(torch.equal(a, b) for a, b in zip(w, ref[0])), f"{name}: weights differ"
        assert all(torch.equal(a, b) for a, b in zip(m, ref[1])), f"{name}: m differs"
        assert f == ref[2], f"{name}: flip counts differ"
    return {"paths": list(results), "flips_per_step": [sum(f) for f in ref[2]]}


# ----------------------------------------------------------------------------------------------------------------
def bundle_pytest(folder: Path) -> None:
    """Copy pytest and its pure-Python dependencies from this interpreter into ``folder`` (for a machine without
    pytest and without a package index: carry the folder, the check puts it on the path)."""
    import importlib.metadata as md

    folder.mkdir(parents=True, exist_ok=True)
    todo, seen = ["pytest"], set()
    while todo:
        name = todo.pop()
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        for file in dist.files or []:
            src = Path(dist.locate_file(file))
            if src.is_file() and "__pycache__" not in file.parts and file.suffix not in (".so", ".pyd"):
                dest = folder / file
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            marker_ok = True
            if ";" in req:
                try:
                    from packaging.requirements import Requirement

                    marker_ok = Requirement(req).marker is None or Requirement(req).marker.evaluate()
                except Exception:
                    marker_ok = True
            if marker_ok:
                todo.append(re.split(r"[\s;<>=!~\[(]", req, maxsplit=1)[0])
    print(f"copied {', '.join(sorted(seen))} into {folder}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="?", help="the folder for every result (created)")
    parser.add_argument("--dry", action="store_true", help="the CPU dry run even where CUDA is available")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"total seconds (default {GPU_BUDGET_S:.0f}; dry: {DRY_BUDGET_S:.0f})")
    parser.add_argument("--dry-budget", type=float, default=None,
                        help=f"total seconds of a dry run (default {DRY_BUDGET_S:.0f})")
    parser.add_argument("--tiny", action="store_true",
                        help="a dry run at the smallest sizes, fewer smoke checks (what tests/test_gpu_check.py runs)")
    parser.add_argument("--timebox", type=float, default=None,
                        help="seconds of training in the time-boxed cifar10 run (default 130; dry: 4)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the time-boxed run's recipe (repeatable), e.g. precision=bf16-mixed")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--data-dir", default=None, help="where CIFAR-10 is (default: $TORCHBOP_DATA, then "
                        "~/.cache/torchbop)")
    parser.add_argument("--extra-path", type=Path, default=None,
                        help="a folder put on the subprocesses' PYTHONPATH (default: "
                        f"{DEFAULT_EXTRA_PATH.relative_to(ROOT)} when it exists)")
    parser.add_argument("--bundle-pytest", type=Path, default=None, metavar="DIR",
                        help="copy pytest and its dependencies into DIR, then exit")
    # internal: the parts' worker processes
    parser.add_argument("--worker", choices=("smoke", "timebox"), help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.bundle_pytest is not None:
        bundle_pytest(args.bundle_pytest)
        return 0
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    if args.worker is not None:
        (worker_smoke if args.worker == "smoke" else worker_timebox)(args)
        # the results are written: skip the interpreter's teardown (seconds of torch's and the compiler's exit
        # handlers) that the part's timeout would otherwise have to cover
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    if args.results is None:
        parser.error("the results folder is required")

    import torch

    cuda = torch.cuda.is_available()
    args.dry = args.dry or not cuda
    args.device = "cpu" if args.dry else "cuda"
    if args.budget is None:
        args.budget = (args.dry_budget or DRY_BUDGET_S) if args.dry else GPU_BUDGET_S
    if args.timebox is None:
        args.timebox = 4.0 if args.dry else 130.0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)} (choose from {', '.join(PARTS)})")
    return Check(args).run(parts)


if __name__ == "__main__":
    sys.exit(main())
