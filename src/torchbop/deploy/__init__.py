"""Deploying a trained BNN: its summary, a 1-bit packed file, and exact packed inference faster than float.

* :func:`summary` (:mod:`torchbop.deploy.summary`): per layer, binary and float parameters, memory with binary
  weights at 1 bit, binary and float MACs, and totals with float equivalents, as ``larq.models.summary`` shows them.
* :func:`export` / :func:`load_packed` (:mod:`torchbop.deploy.packed_model`): the packed file
  (:mod:`torchbop.deploy.packed_format`), and the :class:`PackedModel` read from it.
* :class:`PackedModel` runs binary layers in integer arithmetic (XNOR-popcount on packed bits,
  :mod:`torchbop.deploy.xnor_kernel`) with the model's eval-mode predictions (:mod:`torchbop.deploy.packed_layers`).

From the command line: ``torchbop summary --recipe cifar10`` and ``torchbop export RUN_DIR -o model.tbop``.
"""

from torchbop.deploy.packed_model import PackedModel, export, load_packed, pack_model
from torchbop.deploy.summary import ModelSummary, summary

__all__ = ["ModelSummary", "PackedModel", "export", "load_packed", "pack_model", "summary"]
