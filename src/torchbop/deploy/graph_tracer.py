r"""Reading a BNN as a graph with ``torch.fx``: which modules are kept whole, and what a traced node belongs to.

``torch.fx.Tracer`` runs a model's ``forward`` on proxies and records every module call and function call as a node
of a graph, residual adds and concatenations included. By default it keeps only modules of the ``torch.nn``
namespace whole ("leaves") and traces *into* every other module, so torchbop's own layers would come apart into
quantizer calls. :class:`DeployTracer` keeps whole what the packed engine runs as one unit:

- torchbop's binary layers (``is_binary``), ``RSign``, ``RPReLU``, batch norm (``ShiftBatchNorm`` included) and
  the sign quantizers of :mod:`torchbop.quantizers` used as layers;
- every ``torch.nn`` module, as fx does (``nn.Sequential`` and the other containers are traced through).

Any other module (a residual block, a model) is traced through, so its ``forward``'s adds and ``torch.cat`` become
nodes. The models' channels_last conversion (:func:`torchbop.models.memory_format.to_channels_last`, which looks at
the input's strides) is recorded as one call rather than traced (fx's ``autowrap_functions``).

:func:`trace_network` returns the graph (a single layer is traced as a one-layer ``nn.Sequential``); a model
fx cannot trace (Python control flow on tensor values) raises one ``ValueError`` naming the model. :func:`owner` names
the module a node was traced in, for error messages. This follows the approach of torch's own fx-based tools
(``torch.ao.quantization``'s ``QuantizationTracer``, which also overrides ``is_leaf_module``).

Example:
    >>> from torch import nn
    >>> from torchbop.nn import BinaryConv2d
    >>> graph, _ = trace_network(nn.Sequential(BinaryConv2d(3, 4, 3), nn.ReLU()))
    >>> [(node.op, node.target) for node in graph.nodes]
    [('placeholder', 'input'), ('call_module', '0'), ('call_module', '1'), ('output', 'output')]
"""

from __future__ import annotations

from torch import fx, nn

from torchbop import quantizers
from torchbop.models.memory_format import to_channels_last
from torchbop.nn import RPReLU, RSign

__all__ = ["DeployTracer", "trace_network", "owner", "is_unit", "BATCH_NORMS", "SIGN_QUANTIZERS"]

#: Batch norms (``ShiftBatchNorm1d/2d`` are subclasses).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: Quantizers whose forward is sign with sign(0) = +1 and no randomness: what the packed engine can run.
SIGN_QUANTIZERS = (quantizers.SteSign, quantizers.Sign, quantizers.ApproxSign, quantizers.SwishSign)
_QUANTIZER_TYPES = tuple(
    value for value in vars(quantizers).values() if isinstance(value, type) and issubclass(value, nn.Module)
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def is_unit(module: nn.Module) -> bool:
    """True for a module the packed engine (and the summary) treats as one layer rather than looking inside."""
    return (
        getattr(module, "is_binary", False)
        or isinstance(module, (RSign, RPReLU, *BATCH_NORMS))
        or isinstance(module, _QUANTIZER_TYPES)
    )


class DeployTracer(fx.Tracer):
    """``torch.fx.Tracer`` that keeps torchbop's layers whole (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(autowrap_functions=(to_channels_last,))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_unit(m):
            return True
        if isinstance(m, _CONTAINERS):
            return False
        return super().is_leaf_module(m, module_qualified_name)


def trace_network(model: nn.Module) -> tuple[fx.Graph, nn.Module]:
    """``(graph, root)``: the fx graph of ``model``'s forward, torchbop's layers kept whole, and the module its
    ``call_module`` targets are named in (``model``, or ``nn.Sequential(model)`` for a single layer).

    Raises:
        ValueError: fx cannot trace the model (its forward branches on tensor values, or calls what fx cannot
            follow); the message names the model and fx's reason.
    """
    tracer = DeployTracer()
    if tracer.is_leaf_module(model, ""):  # fx traces into the root: a single layer becomes a one-layer network
        model = nn.Sequential(model)
    try:
        return tracer.trace(model), model
    except (fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError, AttributeError) as error:
        raise ValueError(
            f"{type(model).__name__}: torch.fx cannot trace its forward ({type(error).__name__}: "
            f"{error}); the packed engine needs a forward without Python control flow on tensor "
            "values"
        ) from error


def owner(node: fx.Node) -> str:
    """``"qualified.name (Type)"`` of the innermost module whose forward made ``node`` (``"the model"`` at the top)."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, entry in reversed(list(stack.items())):
        if path:
            kind = entry[1] if isinstance(entry, tuple) and len(entry) > 1 else None
            name = getattr(kind, "__name__", None) or str(kind).rsplit(".", 1)[-1].rstrip("'>")
            qualified = entry[0] if isinstance(entry, tuple) else path
            return f"{qualified} ({name})"
    return "the model's forward"
