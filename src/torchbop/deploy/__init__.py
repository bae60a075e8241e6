"""Deploying a trained BNN: its summary, a 1-bit packed file, and exact packed inference faster than float.

* :func:`summary` (:mod:`torchbop.deploy.summary`): per layer, binary and float parameters, memory with binary
  weights at 1 bit, binary and float MACs, and totals with float equivalents, as ``larq.models.summary`` shows them.
* :func:`export` / :func:`load_packed` (:mod:`torchbop.deploy.packed_model`): the packed file
  (:mod:`torchbop.deploy.packed_format`), and the :class:`PackedModel` read from it.
* :class:`PackedModel` runs binary layers in integer arithmetic (XNOR-popcount on packed bits, one C library:
  :mod:`torchbop.deploy.engine_kernels`) with the model's eval-mode predictions (:mod:`torchbop.deploy.bit_engine`,
  :mod:`torchbop.deploy.packed_layers`).

* :func:`export_onnx` / :func:`onnx_model` (:mod:`torchbop.deploy.onnx_export`): the network as an ONNX graph
  (+-1 weights, sign and batch norm as ONNX operators, a dynamic batch) for ONNX Runtime and the other runtimes
  that read ONNX; needs the ``onnx`` package (``pip install 'torchbop[onnx]'``).

From the command line: ``torchbop summary --recipe cifar10``, ``torchbop export RUN_DIR -o model.tbop`` and
``torchbop export RUN_DIR -o model.onnx --format onnx``.
"""

from torchbop.deploy.onnx_export import export_onnx, onnx_model
from torchbop.deploy.packed_model import PackedModel, export, load_packed, pack_model
from torchbop.deploy.summary import ModelSummary, summary

__all__ = ["ModelSummary", "PackedModel", "export", "export_onnx", "load_packed", "onnx_model", "pack_model", "summary"]
