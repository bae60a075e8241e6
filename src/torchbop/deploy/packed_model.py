r"""From a trained BNN to a packed file and back to a fast, exact inference module.

:func:`export` writes a trained model to a packed file (:mod:`torchbop.deploy.packed_format`): its inference graph
as node records, binary weights 8 to a byte, batch norm's running statistics, shift (and scale, if any) and ``eps``
as they are, the real layers' weights, the pooling and flatten settings, and nothing else (no optimizer state, no
latent weights, no training configuration). :func:`load_packed` reads it back as a :class:`PackedModel`, an
``nn.Module`` for inference only. :func:`pack_model` goes straight from model to :class:`PackedModel` in memory.

The network is read as a graph with ``torch.fx`` (:mod:`torchbop.deploy.graph_tracer`), so residual blocks,
concatenations and any nesting of modules work: Bi-Real Net, ReActNet, QuickNet, binary ResNets, BinaryNet, the
MNIST BNN, and what :func:`torchbop.binarize` makes. Supported (:mod:`torchbop.deploy.graph_export`):
``BinaryConv2d`` (any groups, zero padding mode, ``pad_value`` 0 or +-1, weight scale), ``BinaryLinear`` (weight
scale), real ``nn.Conv2d`` (any groups: depthwise, 1x1) and ``nn.Linear``, batch norm with running statistics,
``nn.MaxPool2d``, ``nn.AvgPool2d``, ``nn.AdaptiveAvgPool2d``, ``nn.Flatten`` / ``torch.flatten``, ReLU,
``nn.Hardtanh``, ``nn.PReLU``, ``RSign``, ``RPReLU``, sign quantizers used as layers, ``nn.Dropout`` / ``nn.Identity``
(dropped), ``operator.add`` / ``torch.add`` of two tensors, ``torch.cat`` and the models' channels_last conversion.
Anything else raises one ``ValueError`` naming it. A binary layer's quantizers must be deterministic with a sign
forward (``SteSign``, ``Sign``, ``ApproxSign``, ``SwishSign``, or ``RSign`` over one of them).

Exactness: a :class:`PackedModel` computes the model's eval-mode forward. Binary layers give the same integers as
the model's float32 products (:mod:`torchbop.deploy.packed_layers`), RSign's threshold and sign are exact, and
everything else is the same torch call on the same numbers in the same memory format (each value keeps the format
the model's would have), so the logits are equal bit for bit whenever torch computes the real layers the same way
on the two sides; ``tests/deploy`` checks equal argmax on real test images and logits within ``1e-5`` (float32
rounding of the non-binary parts, should a kernel choose another summation order for another batch size).

Example:
    >>> import torch
    >>> from torchbop.models import MnistBNN
    >>> model = MnistBNN().eval()
    >>> packed = pack_model(model, backend="torch")
    >>> x = torch.rand(2, 1, 28, 28) * 2 - 1
    >>> torch.equal(packed(x), model(x).detach())
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchbop.deploy.bit_engine import build_engine_ops, to_float
from torchbop.deploy.engine_kernels import resolve_engine
from torchbop.deploy.graph_export import network_nodes
from torchbop.deploy.packed_format import read_packed, write_packed
from torchbop.deploy.packed_ops import build_op
from torchbop.errors import UserError

__all__ = ["PackedModel", "pack_model", "export", "load_packed", "network_nodes", "nodes_from_version1"]

_FIX = "export it again from its checkpoint with `torchbop export RUN_DIR -o FILE`"
#: The name of the network's input in the node records.
INPUT = "input"


class PackedModel(nn.Module):
    """A packed BNN for inference: ``forward(images) -> logits``, exactly the source model's eval-mode forward.

    Built by :func:`pack_model` or :func:`load_packed`; inference only (``train()`` raises, no gradients). The nodes
    run in their recorded order (a topological order of the model's graph), each on the values of its inputs; a
    value is released after its last use.

    Args:
        ops: node name -> its inference module, in execution order.
        inputs: node name -> the names of its inputs (``"input"``, the network's input, or earlier nodes).
        output: the name of the node (or ``"input"``) whose value is returned.
        input_shape: ``[C, H, W]`` the network was exported for, or None.
        backend: what runs the binary layers: ``"torch"`` (the pure-torch reference) or the engine's C path
            (``"portable"``, ``"avx2"``, ``"avx512"``; :mod:`torchbop.deploy.bit_engine`).
        input_channels: the channels (and ``input_dims``, the dimensions) the first layer takes, when known.

    Inputs are checked before any kernel runs: a float32 tensor of ``input_dims`` dimensions, ``input_channels``
    channels and ``input_shape`` (when recorded), contiguous or channels_last, on the CPU for a C path; anything
    else is one ``ValueError`` that names what is wrong and the fix.
    """

    def __init__(
        self,
        ops: dict[str, nn.Module],
        inputs: dict[str, list[str]],
        output: str,
        *,
        input_shape: list[int] | None = None,
        backend: str = "torch",
        input_channels: int | None = None,
        input_dims: int | None = None,
    ) -> None:
        super().__init__()
        self.backend, self.input_channels, self.input_dims = backend, input_channels, input_dims
        known = {INPUT}
        for name in ops:
            missing = [i for i in inputs[name] if i not in known]
            if missing:
                raise ValueError(f"node {name!r} reads {missing}, which no earlier node computes")
            known.add(name)
        if output not in known:
            raise ValueError(f"the output {output!r} is not a node")
        if len({_key(name) for name in ops}) != len(ops):
            raise ValueError(f"node names {list(ops)} are not distinct once dots become underscores")
        self.ops = nn.ModuleDict({_key(name): op for name, op in ops.items()})
        self.output = output
        self.input_shape = input_shape
        last_use = {}
        for i, name in enumerate(ops):
            for source in inputs[name]:
                last_use[source] = i
        self.plan = [
            (name, _key(name), list(inputs[name]), [v for v, at in last_use.items() if at == i and v != output])
            for i, name in enumerate(ops)
        ]
        self.train(False)

    def train(self, mode: bool = True) -> PackedModel:
        if mode:
            raise RuntimeError("a PackedModel is for inference only; train the source model instead")
        self.training = False
        for module in self.ops.modules():
            module.training = False
        return self

    def check_input(self, x: Tensor) -> None:
        """``ValueError`` naming the problem and the fix, for an input this network cannot take."""
        if not isinstance(x, Tensor):
            raise ValueError(f"PackedModel input: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise ValueError(f"PackedModel input: dtype {x.dtype}, expected torch.float32; convert with x.float()")
        if self.backend != "torch" and x.device.type != "cpu":
            raise ValueError(
                f"PackedModel input: on {x.device}, but the {self.backend} kernels run on the CPU; "
                "move it with x.cpu() (or load with backend='torch')"
            )
        expected = None if self.input_shape is None else [int(s) for s in self.input_shape]
        dims = len(expected) + 1 if expected is not None else self.input_dims
        if dims is not None and x.dim() != dims:
            what = f"[N, {', '.join(map(str, expected))}]" if expected else f"{dims} dimensions"
            raise ValueError(
                f"PackedModel input: shape {tuple(x.shape)}, expected {what}; add the batch "
                "dimension with x.unsqueeze(0) for one image"
                if x.dim() == dims - 1
                else f"PackedModel input: shape {tuple(x.shape)}, expected {what}"
            )
        if expected is not None and list(x.shape[1:]) != expected:
            raise ValueError(
                f"PackedModel input: shape {tuple(x.shape)}, but the network was exported for "
                f"[N, {', '.join(map(str, expected))}]; resize or crop the images to that size"
            )
        if self.input_channels is not None and x.dim() >= 2 and x.shape[1] != self.input_channels:
            raise ValueError(
                f"PackedModel input: {x.shape[1]} channels (shape {tuple(x.shape)}), the first layer "
                f"takes {self.input_channels}"
            )
        if x.dim() == 4 and x.numel() and not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            raise ValueError(
                f"PackedModel input: memory layout with strides {x.stride()} is neither contiguous nor "
                "channels_last; pass x.contiguous()"
            )
        if x.dim() != 4 and not x.is_contiguous():
            raise ValueError(f"PackedModel input: not contiguous (strides {x.stride()}); pass x.contiguous()")

    @torch.inference_mode()
    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        values = {INPUT: x}
        for name, key, inputs, release in self.plan:
            op = self.ops[key]  # a node folded into a fused layer is an identity: its value is its input's
            values[name] = values[inputs[0]] if type(op) is nn.Identity else op(*[values[i] for i in inputs])
            for done in release:
                del values[done]
        return to_float(values[self.output])


def _key(name: str) -> str:
    """A ``ModuleDict`` key for a node name (no dots, no clash with an ``nn.Module`` attribute)."""
    key = name.replace(".", "_") or "_"
    return key + "_" if hasattr(nn.Module, key) or key in ("training", "ops", "plan", "output") else key


def _model_from_nodes(
    nodes: list[dict[str, Any]], tensors: dict[str, Tensor], output: str, *, input_shape: list[int] | None, backend: str
) -> PackedModel:
    inputs: dict[str, list[str]] = {}
    for node in nodes:
        name = node["name"]
        if name in inputs or name == INPUT:
            raise ValueError(f"node name {name!r} is used twice")
        inputs[name] = list(node["inputs"])
    if backend == "torch":
        ops = {node["name"]: build_op(node, tensors, "torch") for node in nodes}
    else:
        ops = build_engine_ops(nodes, tensors, output, backend)
    channels, dims = _input_geometry(nodes)
    return PackedModel(
        ops, inputs, output, input_shape=input_shape, backend=backend, input_channels=channels, input_dims=dims
    )


def _input_geometry(nodes: list[dict[str, Any]]) -> tuple[int | None, int | None]:
    """The channels and dimensions of the network's input, from the first layer with a weight that reads it
    (through layout-only ops), or ``(None, None)``."""
    names = {INPUT}
    for node in nodes:
        if not set(node["inputs"]) & names:
            continue
        shape = node.get("attrs", {}).get("shape")
        if node["op"] in ("conv2d", "binary_conv2d") and shape:
            return int(shape[1]) * int(node["attrs"].get("groups", 1)), 4
        if node["op"] in ("linear", "binary_linear") and shape:
            return int(shape[1]), 2
        if node["op"] in ("channels_last", "contiguous"):
            names.add(node["name"])
    return None, None


def pack_model(model: nn.Module, *, backend: str = "auto") -> PackedModel:
    """The :class:`PackedModel` of ``model`` (in memory, no file); ``ValueError`` for what it cannot run.

    Args:
        model: a trained BNN (see the module docstring for what is supported); its eval-mode forward is packed.
        backend: ``"auto"`` (``$TORCHBOP_KERNEL`` if set, else the fastest C path this CPU runs, else torch),
            ``"kernel"`` (the fastest C path), ``"portable"``, ``"avx2"``, ``"avx512"`` (one C path:
            :mod:`torchbop.deploy.engine_kernels`) or ``"torch"`` (the pure-torch reference: float products of +-1).
    """
    backend = resolve_engine(backend)
    nodes, tensors, output = network_nodes(model)
    return _model_from_nodes(nodes, tensors, output, input_shape=None, backend=backend)


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: list[int] | None = None,
    overwrite: bool = False,
    source: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s inference network to the packed file ``path`` (format version 2) and return the path.

    Args:
        model: the trained BNN.
        path: the output file; an existing file is replaced only with ``overwrite``.
        input_shape: ``[C, H, W]`` of its input, recorded for the reader.
        source: JSON-able facts about where the model came from (checkpoint, model name), recorded as is.

    Raises:
        ValueError: the model cannot be traced or has a module or function the packed engine cannot run (named).
        UserError: ``path`` exists and ``overwrite`` is False.
    """
    nodes, tensors, output = network_nodes(model)
    network = {
        "nodes": nodes,
        "output": output,
        "input_shape": input_shape,
        "source": source or {"model": type(model).__name__},
    }
    write_packed(path, {"network": network}, tensors, overwrite=overwrite)
    return Path(path)


#: Keys of the version-1 layer records that name tensors.
_V1_TENSORS = ("weight_bits", "bias", "running_mean", "running_var", "weight")


def nodes_from_version1(network: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The node records and output of a version-1 ``network`` (a chain of ``layers``, run in order after the
    channels_last conversion when ``channels_last`` is true)."""
    nodes: list[dict[str, Any]] = []
    previous = INPUT
    if network.get("channels_last"):
        nodes.append(
            {
                "name": "channels_last",
                "op": "channels_last",
                "inputs": [INPUT],
                "module": None,
                "attrs": {},
                "tensors": {},
            }
        )
        previous = "channels_last"
    for record in network["layers"]:
        layer = record["name"]
        name = f"{layer}".replace(".", "_")
        attrs = {k: v for k, v in record.items() if k not in ("type", "name", *_V1_TENSORS)}
        nodes.append(
            {
                "name": name,
                "op": record["type"],
                "inputs": [previous],
                "module": layer,
                "attrs": attrs,
                "tensors": {k: record[k] for k in _V1_TENSORS if k in record},
            }
        )
        previous = name
    return nodes, previous


def load_packed(path: str | os.PathLike[str], *, backend: str = "auto") -> PackedModel:
    """The :class:`PackedModel` stored in ``path`` (written by :func:`export` / ``torchbop export``; format versions
    1 and 2 are read).

    Raises:
        UserError: the file is missing, not a packed model, of another format version, truncated or corrupt, or
            lacks a key it needs; the message names the file and the fix.
    """
    backend = resolve_engine(backend)
    header, tensors = read_packed(path)
    network = header.get("network")
    key = "layers" if header["version"] == 1 else "nodes"
    if not isinstance(network, dict) or not isinstance(network.get(key), list):
        raise UserError(f"{path}: header key 'network' is missing or malformed; {_FIX}")
    try:
        if header["version"] == 1:
            nodes, output = nodes_from_version1(network)
        else:
            nodes, output = network["nodes"], network["output"]
        return _model_from_nodes(nodes, tensors, output, input_shape=network.get("input_shape"), backend=backend)
    except KeyError as error:
        raise UserError(f"{path}: missing key or tensor {error}; {_FIX}") from error
    except (TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
        raise UserError(f"{path}: malformed network description ({type(error).__name__}: {error}); {_FIX}") from error
