"""DDP on CPU: two processes (gloo) train the same model on disjoint shards and end with identical weights, launched
by Fabric (``devices=2``) or by ``torchrun`` (what a multi-node job runs on each node), without DDP's warning about
gradient strides (channels_last gradients against NCHW buckets: a copy per weight per step)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, {conftest_dir!r})
    from conftest import make_synthetic
    from torchbop.training import Observer, TrainConfig, train


    class SaveWeights(Observer):
        def __init__(self):
            self.first_labels = {{}}

        def on_batch_start(self, run, batch):
            self.first_labels.setdefault(run.epoch, batch[1].clone())

        def on_train_end(self, run):
            state = {{k: v.detach().clone() for k, v in run.model.state_dict().items()}}
            bop = run.optimizer.optimizers[0]
            m = [bop.state[p]["exp_avg"].clone() for g in bop.param_groups for p in g["params"]]
            torch.save({{"model": state, "m": m, "first_labels": self.first_labels, "world_size": run.fabric.world_size,
                         "step": run.step}}, Path({out!r}) / f"rank{{run.fabric.global_rank}}.pt")


    if __name__ == "__main__":
        data = {{"train": make_synthetic(256, seed=1), "test": make_synthetic(64, seed=2)}}
        config = TrainConfig(epochs=2, batch_size=32, gamma=1e-2, threshold=1e-6, accelerator="cpu", devices=2,
                             strategy="ddp", progress_bar=False, limit_train_batches=3, out={out!r})
        result = train(config, data=data, loggers=False, observers=[SaveWeights()])
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
        name = "result_zero.txt" if rank == 0 else f"result_{{os.getpid()}}.txt"
        (Path({out!r}) / name).write_text(f"{{result['world_size']}} {{result['global_step']}} {{result['test_acc']}}")
    """
)


@pytest.mark.parametrize("launcher", ["fabric", "torchrun"])
def test_ddp_two_cpu_processes_stay_identical(tmp_path: Path, launcher: str):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT.format(conftest_dir=str(Path(__file__).parent), out=str(tmp_path)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    command = [sys.executable, str(script)]
    if launcher == "torchrun":  # one node of a multi-node job: torchrun sets RANK, WORLD_SIZE, MASTER_ADDR, ...
        with socket.socket() as free:  # a port no other test run holds
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "1",
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(port),
            str(script),
        ]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Grad strides do not match bucket view strides" not in proc.stderr + proc.stdout
    results = [p.read_text().split() for p in sorted(tmp_path.glob("result_*.txt"))]
    assert len(results) == 2 and (tmp_path / "result_zero.txt").is_file()  # one global zero, one other rank
    assert results[0] == results[1] and results[0][:2] == ["2", "6"]  # same steps and test accuracy on both
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2 and r0["step"] == r1["step"] == 6
    for key in r0["model"]:  # gradients were all-reduced: every rank took the same Bop and Adam steps
        assert torch.equal(r0["model"][key], r1["model"][key]), key
    for a, b in zip(r0["m"], r1["m"]):
        assert torch.equal(a, b)
    for epoch in (0, 1):  # ... from different data: each rank read its own shard
        assert not torch.equal(r0["first_labels"][epoch], r1["first_labels"][epoch])
    assert any(bool(m.abs().sum() > 0) for m in r0["m"])  # Bop did accumulate gradients
