r"""From a traced BNN to the node records of the packed file: one converter per supported module and function.

:func:`network_nodes` traces the model (:mod:`torchbop.deploy.graph_tracer`) and turns each fx node into a record
(``name``, ``op``, ``inputs``, ``module``, ``attrs``, ``tensors``; :mod:`torchbop.deploy.packed_format` documents
them) and its tensors: binary weights as bits, everything else as the model holds it. What the packed engine cannot
run raises one ``ValueError`` that names it: its qualified name and type for a module, the function and the module
whose forward calls it for a function.

Binary inputs. A binary layer reads binary (+-1) input when its ``input_quantizer`` is a sign quantizer, when that
quantizer is an ``RSign`` (exported as an ``rsign`` node before the layer), or when it has no quantizer but its input
comes straight from an ``RSign`` or a sign quantizer used as a layer (sign is idempotent on +-1, so the packed layer
may take the sign again): such layers run on packed bits. Any other binary layer takes its real input as the model
does (a first layer on pixels).

Example:
    >>> from torch import nn
    >>> from torchbop.nn import BinaryConv2d
    >>> from torchbop.nn import RSign
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 1), RSign(4), BinaryConv2d(4, 4, 3, input_quantizer=None))
    >>> nodes, tensors, output = network_nodes(model.eval())
    >>> [(n["name"], n["op"], n["inputs"], n["attrs"].get("binary_input")) for n in nodes]
    [('_0', 'conv2d', ['input'], None), ('_1', 'rsign', ['_0'], None), ('_2', 'binary_conv2d', ['_1'], True)]
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from torchbop.deploy.graph_tracer import BATCH_NORMS, SIGN_QUANTIZERS, owner, trace_network
from torchbop.deploy.packed_ops import pack_weight_bits
from torchbop.models.memory_format import to_channels_last
from torchbop.nn import BinaryConv2d, BinaryLinear, RPReLU, RSign
from torchbop.quantizers import sign

__all__ = ["network_nodes", "SUPPORTED_MODULES", "SUPPORTED_FUNCTIONS"]

#: What a message about an unsupported module lists.
SUPPORTED_MODULES = (
    "BinaryConv2d",
    "BinaryLinear",
    "Conv2d",
    "Linear",
    "batch norm",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "ZeroPad2d",
    "ConstantPad2d",
    "Flatten",
    "ReLU",
    "Hardtanh",
    "PReLU",
    "RSign",
    "RPReLU",
    "sign quantizers",
    "Dropout",
    "Identity",
)
#: What a message about an unsupported function lists.
SUPPORTED_FUNCTIONS = (
    "operator.add / torch.add of two tensors",
    "torch.cat",
    "torch.flatten",
    "relu",
    "to_channels_last",
    "Tensor.contiguous",
)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_FORMATS = {torch.channels_last: "channels_last", torch.contiguous_format: "contiguous_format"}


class _Builder:
    """The records and tensors being written, and which record holds each fx node's value."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.tensors: dict[str, Tensor] = {}
        self.value_of: dict[str, str] = {}  # fx node name -> name of the record (or "input") that computes it
        self.op_of: dict[str, str] = {"input": "input"}

    def ref(self, arg: Any, where: str) -> str:
        if not isinstance(arg, fx.Node):
            raise ValueError(f"{where}: takes the constant {arg!r} where the packed engine needs a tensor")
        return self.value_of[arg.name]

    def emit(
        self,
        name: str,
        op: str,
        inputs: list[str],
        module: str | None,
        attrs: dict[str, Any] | None = None,
        tensors: dict[str, Tensor | None] | None = None,
    ) -> str:
        names = {}
        for key, value in (tensors or {}).items():
            names[key] = None
            if value is not None:
                names[key] = f"{name}.{key}"
                self.tensors[names[key]] = value.detach().cpu().contiguous()
        self.nodes.append(
            {"name": name, "op": op, "inputs": inputs, "module": module, "attrs": attrs or {}, "tensors": names}
        )
        self.op_of[name] = op
        return name


def _label(name: str, module: nn.Module) -> str:
    return f"{name} ({type(module).__name__})"


def _binary_weight(layer: nn.Module, label: str) -> Tensor:
    weight = layer.weight.detach().float().cpu()
    if layer.weight_quantizer is None:
        if not bool(((weight == 1) | (weight == -1)).all()):
            raise ValueError(
                f"{label}: a weight used as is (mode 'bop') must hold exactly -1 and +1; binarize it "
                "with torchbop.nn.binarize_ first"
            )
        return weight
    if not isinstance(layer.weight_quantizer, SIGN_QUANTIZERS):
        raise ValueError(
            f"{label}: weight quantizer {type(layer.weight_quantizer).__name__} is not supported "
            "(deterministic sign quantizers only: SteSign, Sign, ApproxSign, SwishSign)"
        )
    return sign(weight)  # latent mode: the model binarizes with sign in forward


def _check_sign(quantizer: nn.Module, label: str, what: str) -> None:
    if not isinstance(quantizer, SIGN_QUANTIZERS):
        raise ValueError(
            f"{label}: {what} {type(quantizer).__name__} is not supported (deterministic sign "
            "quantizers only: SteSign, Sign, ApproxSign, SwishSign)"
        )


def _binary_layer(b: _Builder, node: fx.Node, layer: nn.Module, label: str) -> None:
    source = b.ref(node.args[0], label)
    quantizer = layer.input_quantizer
    if quantizer is None:
        binary_input = b.op_of[source] in ("sign", "rsign")  # +-1 already: sign again changes nothing
    elif isinstance(quantizer, RSign):
        _check_sign(quantizer.quantizer, label, "input quantizer RSign with quantizer")
        source = b.emit(
            f"{node.name}_rsign",
            "rsign",
            [source],
            f"{node.target}.input_quantizer",
            tensors={"threshold": quantizer.threshold},
        )
        binary_input = True
    else:
        _check_sign(quantizer, label, "input quantizer")
        binary_input = True
    weight = _binary_weight(layer, label)
    scale = layer.output_scale() if hasattr(layer, "output_scale") else None
    tensors = {"weight_bits": pack_weight_bits(weight), "bias": layer.bias, "scale": scale}
    attrs: dict[str, Any] = {"shape": list(weight.shape), "binary_input": binary_input}
    if isinstance(layer, BinaryConv2d):
        if layer.padding_mode != "zeros":
            raise ValueError(f"{label}: padding_mode={layer.padding_mode!r} is not supported (zero padding only)")
        attrs.update(
            stride=list(layer.stride),
            dilation=list(layer.dilation),
            groups=layer.groups,
            padding=layer.padding if isinstance(layer.padding, str) else list(layer.padding),
            pad=list(layer._reversed_padding_repeated_twice),
            pad_value=float(layer.pad_value),
        )
    b.value_of[node.name] = b.emit(
        node.name,
        "binary_conv2d" if isinstance(layer, BinaryConv2d) else "binary_linear",
        [source],
        node.target,
        attrs,
        tensors,
    )


def _module(b: _Builder, node: fx.Node, layer: nn.Module) -> None:
    """One ``call_module`` node."""
    label = _label(node.target, layer)
    if isinstance(layer, (BinaryConv2d, BinaryLinear)):
        return _binary_layer(b, node, layer, label)
    if getattr(layer, "is_binary", False):
        raise ValueError(
            f"{label}: binary layer type {type(layer).__name__} is not supported by the packed engine "
            "(BinaryConv2d and BinaryLinear)"
        )
    source = b.ref(node.args[0], label)
    if isinstance(layer, _DROPOUTS):
        b.value_of[node.name] = source  # nothing to do in eval mode
        return None
    attrs: dict[str, Any] = {}
    tensors: dict[str, Tensor | None] = {}
    if isinstance(layer, nn.Conv2d):
        op, tensors = "conv2d", {"weight": layer.weight.float(), "bias": layer.bias}
        attrs = {
            "shape": list(layer.weight.shape),
            "stride": list(layer.stride),
            "dilation": list(layer.dilation),
            "groups": layer.groups,
            "padding_mode": layer.padding_mode,
            "padding": layer.padding if isinstance(layer.padding, str) else list(layer.padding),
        }
    elif isinstance(layer, nn.Linear):
        op, tensors = "linear", {"weight": layer.weight, "bias": layer.bias}
        attrs = {"shape": list(layer.weight.shape)}
    elif isinstance(layer, BATCH_NORMS):
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(
                f"{label}: batch norm without running statistics (track_running_stats=False) "
                "normalizes with batch statistics in eval mode; it cannot be exported"
            )
        op, attrs = "batch_norm", {"eps": float(layer.eps)}
        tensors = {
            "running_mean": layer.running_mean,
            "running_var": layer.running_var,
            "weight": layer.weight,
            "bias": layer.bias,
        }
    elif isinstance(layer, nn.MaxPool2d) and not layer.return_indices:
        op, attrs = (
            "max_pool2d",
            {
                "kernel_size": layer.kernel_size,
                "stride": layer.stride,
                "padding": layer.padding,
                "dilation": layer.dilation,
                "ceil_mode": layer.ceil_mode,
            },
        )
    elif isinstance(layer, nn.AvgPool2d):
        op, attrs = (
            "avg_pool2d",
            {
                "kernel_size": layer.kernel_size,
                "stride": layer.stride,
                "padding": layer.padding,
                "ceil_mode": layer.ceil_mode,
                "count_include_pad": layer.count_include_pad,
                "divisor_override": layer.divisor_override,
            },
        )
    elif isinstance(layer, nn.AdaptiveAvgPool2d):
        op, attrs = "adaptive_avg_pool2d", {"output_size": layer.output_size}
    elif isinstance(layer, nn.ConstantPad2d):  # nn.ZeroPad2d too
        op, attrs = "constant_pad2d", {"padding": list(layer.padding), "value": float(layer.value)}
    elif isinstance(layer, nn.Flatten):
        op, attrs = "flatten", {"start_dim": layer.start_dim, "end_dim": layer.end_dim}
    elif isinstance(layer, nn.ReLU):
        op = "relu"
    elif isinstance(layer, nn.Hardtanh):  # nn.ReLU6 too
        op, attrs = "hardtanh", {"min_val": float(layer.min_val), "max_val": float(layer.max_val)}
    elif isinstance(layer, nn.PReLU):
        op, tensors = "prelu", {"weight": layer.weight}
    elif isinstance(layer, RSign):
        _check_sign(layer.quantizer, label, "quantizer")
        op, tensors = "rsign", {"threshold": layer.threshold}
    elif isinstance(layer, RPReLU):
        op, tensors = "rprelu", {"shift_in": layer.shift_in, "slope": layer.slope, "shift_out": layer.shift_out}
    elif isinstance(layer, SIGN_QUANTIZERS):
        op = "sign"
    else:
        raise ValueError(
            f"{label}: module type {type(layer).__name__} is not supported by the packed engine "
            f"(supported: {', '.join(SUPPORTED_MODULES)})"
        )
    b.value_of[node.name] = b.emit(node.name, op, [source], node.target, attrs, tensors)
    return None


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _function_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    name = getattr(target, "__name__", str(target))
    for namespace, prefix in ((torch, "torch"), (F, "torch.nn.functional"), (operator, "operator")):
        if getattr(namespace, name, None) is target:
            return f"{prefix}.{name}"
    module = getattr(target, "__module__", None)
    return f"{module}.{getattr(target, '__qualname__', name)}" if module else name


_ADD = (operator.add, operator.iadd, torch.add)
_CAT = (torch.cat, torch.concat, torch.concatenate)
_RELU = (F.relu, torch.relu)


def _function(b: _Builder, node: fx.Node) -> None:
    """One ``call_function`` / ``call_method`` node."""
    where = f"{owner(node)}: {_function_name(node)}"
    target, method = node.target, node.op == "call_method"
    unsupported = ValueError(
        f"{where} is not supported by the packed engine (supported functions: {', '.join(SUPPORTED_FUNCTIONS)})"
    )
    if (target in _ADD and not method) or (method and target == "add"):
        if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1 or set(node.kwargs) - {"alpha"}:
            raise unsupported
        inputs = [b.ref(node.args[0], where), b.ref(node.args[1], where)]
        b.value_of[node.name] = b.emit(node.name, "add", inputs, None)
    elif target in _CAT and not method:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        if not isinstance(tensors, (list, tuple)):
            raise unsupported
        inputs = [b.ref(t, where) for t in tensors]
        b.value_of[node.name] = b.emit(node.name, "cat", inputs, None, {"dim": int(_arg(node, 1, "dim", 0))})
    elif (target is torch.flatten and not method) or (method and target == "flatten"):
        attrs = {"start_dim": int(_arg(node, 1, "start_dim", 0)), "end_dim": int(_arg(node, 2, "end_dim", -1))}
        b.value_of[node.name] = b.emit(node.name, "flatten", [b.ref(node.args[0], where)], None, attrs)
    elif (target in _RELU and not method) or (method and target == "relu"):
        b.value_of[node.name] = b.emit(node.name, "relu", [b.ref(node.args[0], where)], None)
    elif target is to_channels_last:
        b.value_of[node.name] = b.emit(node.name, "channels_last", [b.ref(node.args[0], where)], None)
    elif method and target == "contiguous" and len(node.args) == 1:
        memory_format = node.kwargs.get("memory_format", torch.contiguous_format)
        if memory_format not in _FORMATS:
            raise unsupported
        b.value_of[node.name] = b.emit(
            node.name, "contiguous", [b.ref(node.args[0], where)], None, {"memory_format": _FORMATS[memory_format]}
        )
    else:
        raise unsupported


def network_nodes(model: nn.Module) -> tuple[list[dict[str, Any]], dict[str, Tensor], str]:
    """``(nodes, tensors, output)``: ``model``'s inference graph as node records, their tensors, the output's name.

    Raises:
        ValueError: the model cannot be traced, or has a module or function the packed engine cannot run (named).
    """
    graph, root = trace_network(model)
    modules = dict(root.named_modules())
    b = _Builder()
    output: str | None = None
    handlers: dict[str, Callable[[fx.Node], None]] = {
        "call_module": lambda node: _module(b, node, modules[node.target]),
        "call_function": lambda node: _function(b, node),
        "call_method": lambda node: _function(b, node),
    }
    for node in graph.nodes:
        if node.op == "placeholder":
            if "input" in b.value_of.values():
                raise ValueError(
                    f"{type(model).__name__}: forward takes more than one input ({node.name!r}); the "
                    "packed engine runs models of one input tensor"
                )
            b.value_of[node.name] = "input"
        elif node.op == "output":
            output = b.ref(node.args[0], f"{type(model).__name__}: its output")
        elif node.op in handlers:
            handlers[node.op](node)
        else:  # get_attr: a parameter or buffer used outside a module
            raise ValueError(
                f"{owner(node)}: reads {node.target!r} directly in its forward; the packed engine "
                "runs modules and the functions it knows only"
            )
    assert output is not None, "an fx graph always ends in an output node"
    return b.nodes, b.tensors, output
