"""WallClockBudget: a time-boxed run stops on whole epochs when the next one would not fit, mid-epoch when the
budget is gone, and reports what it completed (a fake clock: one second per training batch)."""

from __future__ import annotations

import pytest

from torchbop.training import Observer, WallClockBudget, train


class Clock(Observer):
    """A clock that advances one second at the end of every training batch (listed before the budget)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_batch_end(self, run):
        self.now += 1.0


@pytest.mark.parametrize(
    "seconds, steps, epochs, stopped",
    [
        (20, 16, 2, "epoch"),  # after 2 epochs (16 s), a third (8 s more) would end at 24 s: stop
        (24, 24, 3, "epoch"),  # the third epoch ends exactly at the budget: the batch check stops there
        (5, 5, 0, "mid-epoch"),  # the first epoch alone is longer than the budget
        (100, 32, 4, None),  # the run ends on its own (4 epochs)
    ],
)
def test_budget_stops_training(tiny_config, synthetic, seconds, steps, epochs, stopped):
    clock = Clock()
    budget = WallClockBudget(seconds, clock=clock)
    result = train(
        tiny_config(epochs=4, limit_eval_batches=0), data=synthetic, observers=[clock, budget], loggers=False
    )
    assert (result["global_step"], budget.epochs_completed, budget.stopped) == (steps, epochs, stopped)
    assert budget.elapsed == steps


def test_budget_must_be_positive():
    with pytest.raises(ValueError, match="Invalid seconds value"):
        WallClockBudget(0)
