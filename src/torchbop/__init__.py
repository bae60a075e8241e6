"""torchbop: binarized neural networks in PyTorch, trained with Bop.

Helwegen et al., "Latent Weights Do Not Exist: Rethinking Binarized Neural Network Optimization", NeurIPS 2019
(arXiv:1906.02107). The core needs torch alone:

* :mod:`torchbop.quantizers`: ``sign`` (sign(0) = +1), ``ste_sign`` and the other straight-through binarizers;
* :mod:`torchbop.nn`: ``BinaryConv2d`` / ``BinaryLinear`` in Bop mode (weights are +-1) or latent mode;
* :mod:`torchbop.optim`: ``Bop``, ``Bop2ndOrder``, ``CompositeOptimizer`` (Bop + Adam as one optimizer);
* :mod:`torchbop.metrics`: ``FlipCounter`` (flips per step and layer, the report's pi_t).

:mod:`torchbop.deploy` (``summary``, ``load_packed``) summarizes a trained BNN and runs its 1-bit packed export;
``export_onnx`` writes it as an ONNX graph for ONNX Runtime and the other ONNX runtimes.

Models (:mod:`torchbop.models`), data (:mod:`torchbop.data`), the training engine on Lightning Fabric
(:mod:`torchbop.training`; :func:`load_model` returns a run's trained network) and the paper's experiments
(:mod:`torchbop.experiments`) build on it. Importing ``torchbop`` imports the core only.

Example:
    >>> import torch
    >>> from torchbop import Bop, CompositeOptimizer
    >>> from torchbop.models import MnistBNN
    >>> from torchbop.nn import split_binary_params
    >>> model = MnistBNN()
    >>> binary, other = split_binary_params(model)
    >>> optimizer = CompositeOptimizer(Bop(binary, gamma=1e-4, threshold=1e-8), torch.optim.Adam(other, lr=0.01),
    ...                                model=model)
"""

from torchbop.deploy import export, export_onnx, load_packed, summary
from torchbop.metrics import FlipCounter
from torchbop.nn import BinaryConv2d, BinaryLinear, binarize, split_binary_params
from torchbop.optim import Bop, Bop2ndOrder, CompositeOptimizer, ThresholdScheduler
from torchbop.quantizers import sign, ste_sign

__version__ = "0.1.0"


def load_model(source):  # noqa: ANN001, ANN201  (typed in torchbop.training.checkpoints.load_model)
    """The trained network of a run folder or checkpoint file (``nn.Module``, trained weights, eval mode, CPU).

    ``torchbop.load_model("runs/mnist")`` or ``torchbop.load_model("runs/mnist/checkpoints/best.ckpt")``: the model
    is rebuilt from the checkpoint's configuration and given its weights
    (:func:`torchbop.training.checkpoints.load_model`; imports the training engine on first use).
    """
    from torchbop.training.checkpoints import load_model as load

    return load(source)


__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "binarize",
    "Bop",
    "Bop2ndOrder",
    "CompositeOptimizer",
    "export",
    "export_onnx",
    "FlipCounter",
    "load_model",
    "load_packed",
    "ThresholdScheduler",
    "sign",
    "split_binary_params",
    "ste_sign",
    "summary",
]
