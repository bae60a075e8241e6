r"""A trained BNN as an ONNX graph: the eval-mode network, +-1 weights, sign and batch norm as ONNX operators.

:func:`export_onnx` writes the network that ``model.eval()`` computes as an ONNX model (opset :data:`OPSET`, a
dynamic batch dimension), so that a BNN trained here runs on any runtime that reads ONNX (ONNX Runtime, TensorRT,
OpenVINO, onnx2tf ...), even where the packed engine does not; :func:`onnx_model` returns the ``onnx.ModelProto``
without writing it. The graph comes from the ``torch.fx`` trace the packed exporter reads
(:func:`torchbop.deploy.graph_tracer.trace_network`: torchbop's layers kept whole, residual adds and concatenations
as nodes), and each node becomes the ONNX operators that compute what its torch forward computes:

- a sign quantizer (sign(0) = +1): ``Sign(Add(Sign(x), 0.5))`` (see the note);
- ``BinaryConv1d/2d``: [sign of the input] -> [``Pad`` with a nonzero ``pad_value``] -> ``Conv`` with the +-1
  weights -> [``Mul`` by the per-channel scale alpha] -> [``Add`` the bias] (the bias is ``Conv``'s own without a
  scale, as in torch); ``BinaryLinear`` and ``nn.Linear``: the same with ``MatMul`` by the transposed weight;
- ``RSign`` (ReActNet, arXiv:2003.03488, eq. 3): ``Sub`` the threshold, then the sign; ``RPReLU`` (eq. 4):
  ``Sub`` shift_in -> ``PRelu`` -> ``Add`` shift_out, the three calls of its forward;
- batch norm: ``BatchNormalization`` (inference) with the running statistics and the layer's eps (scale 1 and
  shift 0 where the layer has none, as ``ShiftBatchNorm``);
- ``nn.Conv1d/2d``, pooling, padding, ReLU, Hardtanh, PReLU, flatten, ``+``, ``torch.cat``: ``Conv``,
  ``MaxPool``, ``AveragePool``, ``GlobalAveragePool``, ``Pad``, ``Relu``, ``Clip``, ``PRelu``, ``Flatten`` or
  ``Reshape``, ``Add``, ``Concat``;
- the channels_last conversion, ``contiguous``, dropout and identity: nothing (ONNX tensors are NCHW by definition
  and have no memory format).

Anything else raises one ``ValueError`` that names it (module: its qualified name and type; function: the function
and the module whose forward calls it).

.. note::
    **sign(0) = +1.** torchbop binarizes with sign(0) = +1 (BinaryNet, Courbariaux et al., arXiv:1602.02830; Larq
    does the same in larq/larq ``larq/math.py``), while ONNX ``Sign`` maps 0 to 0, which would put a 0 into the
    next binary product. The graph computes ``Sign(Add(Sign(x), 0.5))``: ``Sign`` sends {<0, 0, >0} to {-1, 0, +1},
    adding 1/2 gives {-0.5, 0.5, 1.5} exactly, and the second ``Sign`` gives {-1, +1, +1}. It is the very
    computation of :func:`torchbop.quantizers.sign` (``torch.sign(x).add_(0.5).sign_()``), so the two agree on
    every float32 input, -0.0 (+1) and NaN (NaN) included.

.. note::
    **+-1 weights as float32 initializers.** ONNX ``Conv`` and ``MatMul`` take weights of the input's type, so int8
    weights would need a ``Cast`` in front: a constant subgraph that runtimes fold back to float32 when they load
    the model, so only the file would shrink (4x), and tools that read the graph would no longer see a plain
    convolution. The compact form is the packed file (:func:`torchbop.deploy.export`, 1 bit per weight); this is
    the portable one. A latent-mode weight is exported as its sign, as its forward uses it.

Exactness. With +-1 inputs and weights a binary convolution sums integers, exact in float32 below 2^24 in any
order, so a runtime and torch agree on it bit for bit. The real parts (first and last layer, batch norm, scale,
PReLU) are the same float32 operations on the same numbers, but not always evaluated in the same order
(convolution algorithms; ONNX Runtime folds batch norm and per-channel scales into the preceding convolution), so
they agree to a few roundings, and a sign whose argument lies within such a rounding of zero may differ
(``tests/deploy/test_onnx.py`` measures it on real images).

Example:
    >>> from torchbop.nn import BinaryLinear
    >>> graph = onnx_model(nn.Sequential(nn.Linear(4, 8), BinaryLinear(8, 3)), input_shape=[4]).graph
    >>> [node.op_type for node in graph.node]
    ['MatMul', 'Add', 'Sign', 'Add', 'Sign', 'MatMul', 'Identity']
    >>> [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    ['batch', 4]
"""

from __future__ import annotations

import operator
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from torchbop.atomic_file import atomic_write
from torchbop.deploy.graph_tracer import BATCH_NORMS, SIGN_QUANTIZERS, owner, trace_network
from torchbop.errors import UserError
from torchbop.models.memory_format import to_channels_last
from torchbop.nn import BinaryConv1d, BinaryConv2d, BinaryLinear, RPReLU, RSign
from torchbop.quantizers import sign

__all__ = ["export_onnx", "onnx_model", "OPSET", "SUPPORTED"]

#: The ONNX opset of the exported graphs (ONNX Runtime >= 1.12, TensorRT >= 8.6, OpenVINO and onnx2tf read it).
OPSET = 17
#: What a message about an unsupported module or function lists.
SUPPORTED = (
    "BinaryConv1d/2d",
    "BinaryLinear",
    "Conv1d/2d",
    "Linear",
    "batch norm",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "ConstantPad1d/2d/3d",
    "Flatten",
    "ReLU",
    "Hardtanh",
    "PReLU",
    "RSign",
    "RPReLU",
    "sign quantizers",
    "Dropout",
    "Identity",
    "+ / torch.add",
    "torch.cat",
    "torch.flatten",
    "relu",
    "to_channels_last",
    "Tensor.contiguous",
)
_HALF = "sign.half"  # the 0.5 of every sign
_PASS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_ADD, _CAT, _RELU = (operator.add, operator.iadd, torch.add), (torch.cat, torch.concat), (F.relu, torch.relu)


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as error:
        raise ImportError(
            "the ONNX export needs the onnx package: pip install 'torchbop[onnx]' (or onnx>=1.16)"
        ) from error
    return onnx


class _Graph:
    """The ONNX nodes and initializers being written; ``shape`` holds each fx value's traced shape."""

    def __init__(self, onnx: Any) -> None:
        self.onnx, self.nodes, self.initializers = onnx, [], []
        self.value: dict[str, str] = {}  # fx node name -> ONNX value name
        self.count = 0

    def const(self, name: str, tensor: Tensor | list[float] | float, dtype: torch.dtype = torch.float32) -> str:
        array = torch.as_tensor(tensor).detach().to("cpu", dtype).numpy()
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attrs: Any) -> str:
        self.count += 1
        output = name or f"{op_type.lower()}_{self.count}"
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def sign(self, x: str, name: str) -> str:
        """sign with sign(0) = +1, exactly as torchbop's: ``Sign(Add(Sign(x), 0.5))`` (see the module docstring)."""
        if not any(t.name == _HALF for t in self.initializers):
            self.const(_HALF, 0.5)
        return self.op("Sign", [self.op("Add", [self.op("Sign", [x]), _HALF])], name)

    def per_channel(self, name: str, tensor: Tensor, rank: int) -> str:
        """``tensor`` [C] shaped [1, C, 1, ...] to broadcast over a rank-``rank`` [N, C, ...] value."""
        return self.const(name, tensor.detach().float().reshape((1, -1) + (1,) * (rank - 2)))


def _pairs(value: Any, dims: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value)] * dims


def _conv_pads(layer: nn.Module, dims: int) -> list[int]:
    """ONNX ``pads`` (all begins, then all ends) of a torch convolution, ``"same"`` and ``"valid"`` included."""
    if layer.padding == "valid":
        return [0] * (2 * dims)
    if layer.padding == "same":  # as torch: total dilation * (k - 1), the odd pixel at the end
        totals = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size)]
        return [t // 2 for t in totals] + [t - t // 2 for t in totals]
    return list(layer.padding) * 2


def _binary_weight(layer: nn.Module, label: str) -> Tensor:
    weight = layer.weight.detach().float()
    if layer.weight_quantizer is None:
        if not bool(((weight == 1) | (weight == -1)).all()):
            raise ValueError(
                f"{label}: a weight used as is (mode 'bop') must hold exactly -1 and +1; binarize it "
                "with torchbop.nn.binarize_ first"
            )
        return weight
    _check_sign(layer.weight_quantizer, label, "weight quantizer")
    return sign(weight)


def _check_sign(quantizer: nn.Module, label: str, what: str) -> None:
    if not isinstance(quantizer, SIGN_QUANTIZERS):
        raise ValueError(
            f"{label}: {what} {type(quantizer).__name__} is not supported by the ONNX exporter "
            "(deterministic sign quantizers only: SteSign, Sign, ApproxSign, SwishSign)"
        )


def _binary_input(g: _Graph, x: str, layer: nn.Module, name: str, label: str) -> str:
    quantizer = layer.input_quantizer
    if quantizer is None:
        return x
    if isinstance(quantizer, RSign):
        _check_sign(quantizer.quantizer, label, "input quantizer RSign with quantizer")
        threshold = g.per_channel(f"{name}.input_threshold", quantizer.threshold, len(g.shape[name]))
        return g.sign(g.op("Sub", [x, threshold]), f"{name}.input_sign")
    _check_sign(quantizer, label, "input quantizer")
    return g.sign(x, f"{name}.input_sign")


def _scale_and_bias(g: _Graph, y: str, layer: nn.Module, name: str, alpha: Tensor | None) -> str:
    rank = len(g.shape[name])
    if alpha is not None:
        y = g.op("Mul", [y, g.per_channel(f"{name}.scale", alpha, rank)])
    if layer.bias is not None and (alpha is not None or not isinstance(layer, (nn.Conv1d, nn.Conv2d))):
        y = g.op("Add", [y, g.per_channel(f"{name}.bias", layer.bias, rank)])
    return y


def _conv(g: _Graph, x: str, layer: nn.Module, name: str, label: str) -> str:
    binary = getattr(layer, "is_binary", False)
    dims = len(layer.kernel_size)
    if layer.padding_mode != "zeros":
        raise ValueError(f"{label}: padding_mode={layer.padding_mode!r} is not supported (zero padding only)")
    if binary:
        x = _binary_input(g, x, layer, name, label)
    weight = _binary_weight(layer, label) if binary else layer.weight.detach().float()
    alpha = layer.output_scale() if binary else None
    pads = _conv_pads(layer, dims)
    if binary and layer.pad_value != 0.0:  # torch adds the border term conv(pad(0, v)); same sum, exact on +-1
        pad = g.const(f"{name}.pads", [0, 0] + pads[:dims] + [0, 0] + pads[dims:], torch.int64)
        x = g.op("Pad", [x, pad, g.const(f"{name}.pad_value", float(layer.pad_value))], mode="constant")
        pads = [0] * (2 * dims)
    inputs = [x, g.const(f"{name}.weight", weight)]
    if layer.bias is not None and alpha is None:
        inputs.append(g.const(f"{name}.bias", layer.bias.detach().float()))
    y = g.op(
        "Conv",
        inputs,
        kernel_shape=list(layer.kernel_size),
        strides=list(layer.stride),
        pads=pads,
        dilations=list(layer.dilation),
        group=layer.groups,
    )
    return _scale_and_bias(g, y, layer, name, alpha)


def _linear(g: _Graph, x: str, layer: nn.Module, name: str, label: str) -> str:
    binary = getattr(layer, "is_binary", False)
    if binary:
        x = _binary_input(g, x, layer, name, label)
    weight = _binary_weight(layer, label) if binary else layer.weight.detach().float()
    y = g.op("MatMul", [x, g.const(f"{name}.weight_t", weight.t())])
    return _scale_and_bias(g, y, layer, name, layer.output_scale() if binary else None)


def _batch_norm(g: _Graph, x: str, layer: nn.Module, name: str, label: str) -> str:
    if layer.running_mean is None or layer.running_var is None:
        raise ValueError(
            f"{label}: batch norm without running statistics (track_running_stats=False) "
            "normalizes with batch statistics in eval mode; it cannot be exported"
        )
    count = layer.running_mean.numel()
    scale = layer.weight if layer.weight is not None else torch.ones(count)
    shift = layer.bias if layer.bias is not None else torch.zeros(count)
    inputs = [
        g.const(f"{name}.{key}", value.detach().float())
        for key, value in (
            ("scale", scale),
            ("bias", shift),
            ("running_mean", layer.running_mean),
            ("running_var", layer.running_var),
        )
    ]
    return g.op("BatchNormalization", [x, *inputs], epsilon=float(layer.eps))


def _pool(g: _Graph, x: str, layer: nn.Module, size: tuple[int, ...], label: str) -> str:
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        out = [s if o is None else o for s, o in zip(size, _pairs(layer.output_size, 2))]
        if out == [1, 1]:
            return g.op("GlobalAveragePool", [x])
        if any(s % o for s, o in zip(size, out)):
            raise ValueError(
                f"{label}: output_size {layer.output_size} does not divide the input {list(size)}; "
                "the ONNX exporter writes adaptive pooling as a fixed average pool"
            )
        kernel = [s // o for s, o in zip(size, out)]
        return g.op("AveragePool", [x], kernel_shape=kernel, strides=kernel)
    kernel = _pairs(layer.kernel_size, 2)
    attrs: dict[str, Any] = {
        "kernel_shape": kernel,
        "strides": _pairs(layer.stride or kernel, 2),
        "pads": _pairs(layer.padding, 2) * 2,
        "ceil_mode": int(layer.ceil_mode),
    }
    if isinstance(layer, nn.MaxPool2d):
        if layer.return_indices:
            raise ValueError(f"{label}: return_indices=True is not supported")
        return g.op("MaxPool", [x], dilations=_pairs(layer.dilation, 2), **attrs)
    if layer.divisor_override is not None:
        raise ValueError(f"{label}: divisor_override={layer.divisor_override} has no ONNX AveragePool equivalent")
    return g.op("AveragePool", [x], count_include_pad=int(layer.count_include_pad), **attrs)


def _flatten(g: _Graph, x: str, start: int, end: int, rank: int) -> str:
    start, end = start % rank, end % rank
    if start == 1 and end == rank - 1:
        return g.op("Flatten", [x], axis=1)
    shape = [0] * start + [-1] + [0] * (rank - 1 - end)  # 0 copies the input's dimension (the batch, too)
    return g.op("Reshape", [x, g.const(f"flatten_{g.count}.shape", shape, torch.int64)])


def _module(g: _Graph, node: fx.Node, layer: nn.Module) -> str:
    """The ONNX value of one ``call_module`` node."""
    name, label = node.name, f"{node.target} ({type(layer).__name__})"
    x = g.value[node.args[0].name] if node.args and isinstance(node.args[0], fx.Node) else None
    if x is None:
        raise ValueError(f"{label}: takes no tensor input; the ONNX exporter needs one")
    rank = len(g.shape[node.args[0].name])
    if isinstance(layer, (BinaryConv1d, BinaryConv2d)) or type(layer) in (nn.Conv1d, nn.Conv2d):
        return _conv(g, x, layer, name, label)
    if isinstance(layer, BinaryLinear) or type(layer) is nn.Linear:
        return _linear(g, x, layer, name, label)
    if getattr(layer, "is_binary", False):
        raise ValueError(
            f"{label}: binary layer type {type(layer).__name__} is not supported by the ONNX exporter "
            "(BinaryConv1d, BinaryConv2d, BinaryLinear)"
        )
    if isinstance(layer, _PASS):
        return x
    if isinstance(layer, BATCH_NORMS):
        return _batch_norm(g, x, layer, name, label)
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return _pool(g, x, layer, g.shape[node.args[0].name][-2:], label)
    if isinstance(layer, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):  # nn.ZeroPad*d too
        begins, ends = [0] * rank, [0] * rank
        for i in range(len(layer.padding) // 2):  # torch lists (begin, end) from the last dimension backwards
            begins[rank - 1 - i], ends[rank - 1 - i] = layer.padding[2 * i], layer.padding[2 * i + 1]
        pads = g.const(f"{name}.pads", begins + ends, torch.int64)
        return g.op("Pad", [x, pads, g.const(f"{name}.value", float(layer.value))], mode="constant")
    if isinstance(layer, nn.Flatten):
        return _flatten(g, x, layer.start_dim, layer.end_dim, rank)
    if isinstance(layer, nn.ReLU):
        return g.op("Relu", [x])
    if isinstance(layer, nn.Hardtanh):  # nn.ReLU6 too
        low, high = g.const(f"{name}.min", float(layer.min_val)), g.const(f"{name}.max", float(layer.max_val))
        return g.op("Clip", [x, low, high])
    if isinstance(layer, nn.PReLU):
        slope = layer.weight if layer.weight.numel() == 1 else layer.weight.reshape((-1,) + (1,) * (rank - 2))
        return g.op("PRelu", [x, g.const(f"{name}.slope", slope.detach().float())])
    if isinstance(layer, RSign):
        _check_sign(layer.quantizer, label, "quantizer")
        return g.sign(g.op("Sub", [x, g.per_channel(f"{name}.threshold", layer.threshold, rank)]), name)
    if isinstance(layer, RPReLU):
        y = g.op("Sub", [x, g.per_channel(f"{name}.shift_in", layer.shift_in, rank)])
        slope = g.const(f"{name}.slope", layer.slope.detach().float().reshape((-1,) + (1,) * (rank - 2)))
        return g.op("Add", [g.op("PRelu", [y, slope]), g.per_channel(f"{name}.shift_out", layer.shift_out, rank)])
    if isinstance(layer, SIGN_QUANTIZERS):
        return g.sign(x, name)
    raise ValueError(
        f"{label}: module type {type(layer).__name__} is not supported by the ONNX exporter "
        f"(supported: {', '.join(SUPPORTED)})"
    )


def _function(g: _Graph, node: fx.Node) -> str:
    """The ONNX value of one ``call_function`` / ``call_method`` node."""
    method, target = node.op == "call_method", node.target
    label = f"Tensor.{target}" if method else getattr(target, "__qualname__", str(target))
    unsupported = ValueError(
        f"{owner(node)}: {label} is not supported by the ONNX exporter (supported: {', '.join(SUPPORTED)})"
    )
    if target in _CAT and not method:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)) or not all(isinstance(t, fx.Node) for t in tensors):
            raise unsupported
        return g.op("Concat", [g.value[t.name] for t in tensors], axis=int(dim))
    args = [a for a in node.args if isinstance(a, fx.Node)]
    if not args:
        raise unsupported
    x, rank = g.value[args[0].name], len(g.shape[args[0].name])
    if (target in _ADD and not method) or (method and target == "add"):
        if len(args) != 2 or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
            raise unsupported
        return g.op("Add", [x, g.value[args[1].name]])
    if (target is torch.flatten and not method) or (method and target == "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return _flatten(g, x, int(start), int(end), rank)
    if (target in _RELU and not method) or (method and target == "relu"):
        return g.op("Relu", [x])
    if target is to_channels_last or (method and target == "contiguous" and len(node.args) == 1):
        return x  # a memory format: nothing in ONNX
    raise unsupported


def onnx_model(model: nn.Module, input_shape: list[int] | tuple[int, ...], *, opset: int = OPSET) -> Any:
    """``model``'s eval-mode network as an ``onnx.ModelProto``: input ``"input"`` [batch, \\*input_shape] float32,
    output ``"logits"``, the batch dimension dynamic. See the module docstring for what each layer becomes.

    Args:
        model: the trained BNN (left in the mode it was in; traced in eval mode).
        input_shape: one input without the batch dimension, e.g. ``[3, 32, 32]``.
        opset: the ONNX opset, 17 or later.

    Raises:
        ValueError: ``input_shape`` or ``opset`` is invalid, the model cannot be traced, or it has a module or
            function the exporter cannot write (named).
        ImportError: the ``onnx`` package is not installed.
    """
    onnx = _import_onnx()
    shape = list(input_shape) if isinstance(input_shape, (list, tuple)) else None
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
        raise ValueError(
            f"Invalid input_shape: {input_shape!r} (one input without the batch dimension, positive "
            "ints, e.g. [3, 32, 32])"
        )
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 17:
        raise ValueError(f"Invalid opset: {opset!r} (an int >= 17)")
    graph, root = trace_network(model)
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(fx.GraphModule(root, graph)).propagate(torch.zeros([2, *shape]))
    finally:
        model.train(training)
    g = _Graph(onnx)
    g.shape = {
        node.name: tuple(node.meta["tensor_meta"].shape)
        for node in graph.nodes
        if hasattr(node.meta.get("tensor_meta"), "shape")
    }  # tensors only (not the output's tuple)
    modules = dict(root.named_modules())
    output = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if "input" in g.value.values():
                raise ValueError(
                    f"{type(model).__name__}: forward takes more than one input ({node.name!r}); the "
                    "ONNX exporter writes models of one input tensor"
                )
            g.value[node.name] = "input"
        elif node.op == "call_module":
            g.value[node.name] = _module(g, node, modules[node.target])
        elif node.op in ("call_function", "call_method"):
            g.value[node.name] = _function(g, node)
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise ValueError(
                    f"{type(model).__name__}: forward returns {type(node.args[0]).__name__}; the ONNX "
                    "exporter writes models of one output tensor"
                )
            output = node.args[0]
        else:  # get_attr: a parameter or buffer used outside a module
            raise ValueError(
                f"{owner(node)}: reads {node.target!r} directly in its forward; the ONNX exporter "
                "writes modules and the functions it knows only"
            )
    assert output is not None, "an fx graph always ends in an output node"
    h = onnx.helper
    g.nodes.append(h.make_node("Identity", [g.value[output.name]], ["logits"], name="logits"))
    batch = ["batch"]
    inputs = [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, batch + shape)]
    outputs = [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, batch + list(g.shape[output.name][1:]))]
    opsets = [h.make_opsetid("", opset)]
    proto = h.make_model(
        h.make_graph(g.nodes, type(model).__name__, inputs, outputs, g.initializers),
        opset_imports=opsets,
        producer_name="torchbop",
        ir_version=h.find_min_ir_version_for(opsets),
    )
    onnx.checker.check_model(proto)
    return proto


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    input_shape: list[int] | tuple[int, ...],
    overwrite: bool = False,
    opset: int = OPSET,
) -> Path:
    """Write ``model``'s eval-mode network to the ONNX file ``path`` (:func:`onnx_model`) and return the path.

    Args:
        model: the trained BNN.
        path: the output file (written whole or not at all); an existing file is replaced only with ``overwrite``.
        input_shape: one input without the batch dimension, e.g. ``[1, 28, 28]``.
        opset: the ONNX opset, 17 or later.

    Raises:
        ValueError: see :func:`onnx_model`.
        UserError: ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"{path}: already exists; choose another output file or pass --overwrite")
    data = onnx_model(model, input_shape, opset=opset).SerializeToString()
    with atomic_write(path) as file:
        file.write(data)
    return path
