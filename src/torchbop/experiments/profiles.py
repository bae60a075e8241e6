"""The named scales the experiments run at. Names and descriptions only: each experiment module holds its own
settings at every profile (its ``CONFIGS``), so that an experiment is one module.

``paper`` is the scale the paper and the reproducibility report ran at; ``cpu`` is that scale where a CPU can
afford it (hours, not days: Figure 2 with a narrower network, Figure 3 at the quick scale); ``quick`` runs the whole
suite of four in under 15 minutes on a 2-core CPU (small widths, subsets, few epochs and seeds); ``smoke`` is the
seconds-long scale of the tests. A command line changes single fields (``--epochs 3``, ``--set retrain_epochs=2``) on
top of a profile; :func:`torchbop.experiments.runner.configure` does that and rejects unknown fields.

Conventions the experiments' settings share: ``subset`` and ``test_subset`` keep the first N images of a fixed (seed 0)
random permutation of the training and test sets, the same images for every seed and configuration (``None``: the
whole set). ``precision`` is the ``TrainConfig.precision`` of the training runs: ``"32"`` in every profile until
bf16-mixed has shown parity with fp32 (``--set precision=auto`` opts in: bf16-mixed where the hardware runs bf16
natively, resolved when the runs are planned, so that the key says what ran).

Example:
    >>> list(PROFILES)
    ['paper', 'cpu', 'quick', 'smoke']
"""

from __future__ import annotations

__all__ = ["PROFILES"]

#: profile name -> what it is for (the report's header quotes it)
PROFILES: dict[str, str] = {
    "paper": "the published scale (paper and reproducibility report)",
    "cpu": "the published scale where a CPU allows it: Table 1 and Figure 1 as published, Figure 2 at the published "
    "length and data with BinaryNet at width 1/8, Figure 3 at the quick scale (about 20 CPU-hours on a 2-core "
    "AVX2 machine)",
    "quick": "the whole suite in under 15 minutes on a 2-core CPU: subsets, 1/8 width, 2-4 epochs, 1-3 seeds",
    "smoke": "seconds per experiment, for tests: tiny subsets, 1/16 width, 1-2 epochs",
}
