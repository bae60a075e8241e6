"""``RunJob``: what one cluster job executes, one planned run of an experiment, under that run's lock.

submitit pickles a job's function and its arguments into the job's folder (with cloudpickle) and unpickles them in
the job's process, on another machine for SLURM (see facebookincubator/submitit, docs/checkpointing.md and
submitit/helpers.py). So a job carries no module and no function: :class:`RunJob` holds a number (its torch
threads) and its one argument, the run's *task*, holds strings, numbers and the run's params: the experiment's name
and :func:`experiment_reference` (where its module is, ``"torchbop.experiments.cifar10"``), the run's key, label,
absolute paths of its scratch folder and record, the data root. The job process imports the experiment from that
reference (:func:`resolve_experiment`), then does what a local worker does
(:func:`~torchbop.experiments.execution.claim_and_execute`): lock, execute or find the record, store.

**Preempted or timed-out jobs continue.** SLURM signals a job (``USR2``, 90 s before its time limit, or when it is
preempted); submitit then calls the job function's ``checkpoint`` method and requeues what it returns.
:meth:`RunJob.checkpoint` returns the same call: the run's own checkpoints are in its scratch folder, so the
requeued job resumes from the last one, as the next invocation of a killed local run does (the lock of the signalled
process is released when it exits). submitit requeues a job that reached its time limit up to 3 times.

Example:
    >>> from torchbop.experiments.registry import get_experiment
    >>> experiment_reference(get_experiment("cifar10"))
    'torchbop.experiments.cifar10'
    >>> resolve_experiment("cifar10", "torchbop.experiments.cifar10") is get_experiment("cifar10")
    True
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torchbop.experiments.execution import Outcome, claim_and_execute, init_worker
from torchbop.experiments.registry import EXPERIMENTS
from torchbop.experiments.spec import Experiment

__all__ = ["RunJob", "experiment_reference", "resolve_experiment"]


def experiment_reference(experiment: Any) -> str:
    """Where a job process finds ``experiment``: ``"module"`` for an experiment module, ``"module:Qualified.name"``
    for an object (a class following the protocol). ``ValueError`` for one defined in ``__main__`` (a script run
    directly), which no other process can import."""
    if inspect.ismodule(experiment):
        module, name = experiment.__name__, ""
    else:
        module, name = getattr(experiment, "__module__", None), getattr(experiment, "__qualname__", None)
        if not module or not name or "<locals>" in name:
            raise ValueError(
                f"Invalid experiment {experiment!r}: a job imports its experiment by name; define it "
                "at the top level of an importable module"
            )
    if module == "__main__":
        raise ValueError(
            f"Invalid experiment {getattr(experiment, 'NAME', experiment)!r}: it is defined in "
            "__main__, which a job cannot import; move it to an importable module"
        )
    return f"{module}:{name}" if name else module


def resolve_experiment(name: str, reference: str) -> Experiment:
    """The experiment ``name``: from the registry when this process has it there, else imported from ``reference``
    (an experiment registered at run time, in the process that planned the run, is not in a job's registry)."""
    if name in EXPERIMENTS:
        return EXPERIMENTS[name]
    module_name, _, qualname = reference.partition(":")
    found: Any = importlib.import_module(module_name)
    for part in filter(None, qualname.split(".")):
        found = getattr(found, part)
    return found


class RunJob:
    """The function of every job: ``RunJob(threads)(task) -> (outcome, record, traceback)``.

    ``task`` is :func:`~torchbop.experiments.execution.execute_run`'s keyword arguments with ``reference`` (see
    :func:`experiment_reference`) in place of ``execute`` and ``keep_run_dir``. The run is claimed without waiting:
    a run locked by another invocation comes back ``"busy"`` at once rather than holding a cluster allocation idle;
    the submitting process waits for it instead.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __call__(self, task: dict[str, Any]) -> Outcome:
        init_worker(self.threads)
        module = resolve_experiment(task["experiment"], task["reference"])
        run = {k: v for k, v in task.items() if k != "reference"}
        return claim_and_execute({**run, "execute": module.execute, "keep_run_dir": module.KEEP_RUN_DIR}, wait=False)

    def checkpoint(self, task: dict[str, Any]) -> Any:
        """Called by submitit when the job is preempted or about to time out: requeue the same call (the run
        continues from its own last checkpoint)."""
        from submitit.helpers import DelayedSubmission  # only ever called inside a submitit job

        return DelayedSubmission(self, task)
