r"""One optimizer made of several: Bop for the binary weights, any torch optimizer for the rest.

A binarized network has two kinds of parameters. Its binary weights are trained by Bop; its batch-norm shifts (and any
other real-valued parameter) by an ordinary optimizer, Adam in the paper. The two must step together, from the same
backward pass, and a training loop, an ``lr_scheduler`` or Lightning's automatic optimization each expect *one*
``torch.optim.Optimizer``. :class:`CompositeOptimizer` is that one optimizer (Larq calls its counterpart
``CaseOptimizer``):

* its ``param_groups`` are its children's groups, in order, as the very same dicts, so a scheduler attached to the
  composite schedules the children (give ``LambdaLR`` one lambda per group to decay Bop's gamma alone);
* ``step(closure)`` evaluates the closure once, then checks every child, then steps every child: a step that one
  child refuses (a non-finite gradient under Bop's ``nonfinite="raise"``, a bad hyperparameter) leaves *every*
  child untouched; ``zero_grad`` clears them all;
* ``state_dict()`` is in torch's own format, ``{"state": {0: ..., 1: ..., ...}, "param_groups": [...]}``, numbered
  as one torch optimizer over the concatenated groups would number them, each group tagged with the child it belongs
  to (``"composite_child": i``); ``load_state_dict`` routes every group back to its child, so a checkpoint resumes
  exactly (or, when a child's part does not fit that child, loads none of them). torch.distributed.checkpoint's
  ``get_optimizer_state_dict`` / ``set_optimizer_state_dict`` and other tools that read optimizer state by
  position understand it. The format written before (``{"optimizers": [each child's state dict]}``) still loads.

Larq's counterpart: ``larq/optimizers.py`` (``CaseOptimizer``) in larq/larq; Bop: Helwegen et al., "Latent Weights
Do Not Exist: Rethinking Binarized Neural Network Optimization", NeurIPS 2019, arXiv:1906.02107.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

__all__ = ["CompositeOptimizer"]

CHILD_KEY = "composite_child"  # in each saved param group: the index of the child it belongs to


class _RoutedState(MutableMapping):
    """``optimizer.state`` of the composite: a view that reads from and writes to the child owning each parameter."""

    def __init__(self, composite: "CompositeOptimizer") -> None:
        self._composite = composite

    def _child(self, param: Tensor) -> Optimizer:
        owner = self._composite._owner_of(param)
        if owner is None:
            raise KeyError(f"parameter of shape {tuple(param.shape)} is not trained by this CompositeOptimizer")
        return owner

    def __getitem__(self, param: Tensor) -> Any:
        return self._child(param).state[param]

    def __setitem__(self, param: Tensor, value: Any) -> None:
        self._child(param).state[param] = value

    def __delitem__(self, param: Tensor) -> None:
        del self._child(param).state[param]

    def __iter__(self) -> Iterator[Tensor]:
        for optimizer in self._composite.optimizers:
            yield from list(optimizer.state.keys())

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self._composite.optimizers)


class CompositeOptimizer(Optimizer):
    r"""Several optimizers over disjoint parameters, behaving as one ``torch.optim.Optimizer``.

    Args:
        *optimizers: the children, e.g. ``Bop(binary_params)`` and ``torch.optim.Adam(other_params, lr=0.01)``.
            Each must own at least one parameter, and no parameter may belong to two of them.
        model: when given, every trainable parameter of ``model`` must be claimed by exactly one child, and error
            messages name parameters by their name in the model.

    Raises:
        TypeError: a child is not a ``torch.optim.Optimizer``, or ``model`` is not an ``nn.Module``.
        ValueError: no child, a child without parameters, a parameter claimed twice, or (with ``model``) a
            trainable parameter that no child claims.

    Example:
        >>> from torchbop.optim import Bop
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2, bias=False), torch.nn.BatchNorm1d(2))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]]))
        >>> opt = CompositeOptimizer(
        ...     Bop([model[0].weight], gamma=1e-3),
        ...     torch.optim.Adam(model[1].parameters(), lr=0.01),
        ...     model=model,
        ... )
        >>> [group["lr"] for group in opt.param_groups]  # Bop's gamma, then Adam's learning rate
        [0.001, 0.01]
        >>> model(torch.randn(4, 3)).sum().backward()
        >>> opt.step()
        >>> saved = opt.state_dict()  # torch's format: parameters numbered across the children
        >>> sorted(saved)
        ['param_groups', 'state']
        >>> [(group["composite_child"], group["params"]) for group in saved["param_groups"]]
        [(0, [0]), (1, [1, 2])]
        >>> sorted(saved["state"][0])  # Bop's state of the binary weight; 1 and 2 hold Adam's
        ['exp_avg', 'flips', 'nonfinite_entries', 'nonfinite_steps', 'step']
        >>> opt.load_state_dict(saved)
    """

    def __init__(self, *optimizers: Optimizer, model: nn.Module | None = None) -> None:
        if len(optimizers) == 1 and isinstance(optimizers[0], (list, tuple)):
            optimizers = tuple(optimizers[0])
        if not optimizers:
            raise ValueError("CompositeOptimizer needs at least one optimizer.")
        for i, optimizer in enumerate(optimizers):
            if not isinstance(optimizer, Optimizer):
                raise TypeError(f"Expected a torch.optim.Optimizer at optimizers[{i}], got {type(optimizer).__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"Expected model to be an nn.Module, got {type(model).__name__}")
        self.optimizers = list(optimizers)
        self._check_claims(model)
        # Optimizer.__init__ sets up hooks and step profiling; the groups it would build are discarded by the
        # param_groups/state properties below, which always read the children.
        super().__init__([p for g in self.param_groups for p in g["params"]], defaults={})
        self._initialized = True

    # -- parameters and state live in the children -------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @param_groups.setter
    def param_groups(self, value: list) -> None:
        if value:  # Optimizer.__init__ assigns [] then appends to a temporary list: nothing else may set it
            raise RuntimeError("CompositeOptimizer's param_groups are its children's; add groups to a child.")

    @property
    def state(self) -> _RoutedState:  # type: ignore[override]
        return _RoutedState(self)

    @state.setter
    def state(self, value: Any) -> None:
        if value:
            raise RuntimeError("CompositeOptimizer's state is its children's; load it with load_state_dict.")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "_initialized"):
            return  # called by Optimizer.__init__ for the discarded group
        raise RuntimeError("Add the group to one of the children: composite.optimizers[i].add_param_group(...)")

    def _owner_of(self, param: Tensor) -> Optimizer | None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                if any(p is param for p in group["params"]):
                    return optimizer
        return None

    def _check_claims(self, model: nn.Module | None) -> None:
        names = {id(p): name for name, p in model.named_parameters()} if model is not None else {}

        def label(p: Tensor) -> str:
            return f"parameter {names[id(p)]!r}" if id(p) in names else f"a parameter of shape {tuple(p.shape)}"

        claimed: dict[int, int] = {}
        for i, optimizer in enumerate(self.optimizers):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if not params:
                raise ValueError(f"optimizers[{i}] ({type(optimizer).__name__}) has no parameters to train.")
            for p in params:
                if id(p) in claimed:
                    j = claimed[id(p)]
                    raise ValueError(
                        f"{label(p)} is claimed by optimizers[{j}] ({type(self.optimizers[j]).__name__}) and "
                        f"optimizers[{i}] ({type(optimizer).__name__}); give each parameter to one optimizer "
                        "(torchbop.nn.split_binary_params(model) splits a model's parameters)."
                    )
                claimed[id(p)] = i
        if model is not None:
            for name, p in model.named_parameters():
                if p.requires_grad and id(p) not in claimed:
                    raise ValueError(
                        f"parameter {name!r} of the model is trainable but no optimizer claims it; add it to one "
                        "of the optimizers or set requires_grad=False."
                    )

    # -- the optimizer contract ------------------------------------------------------------------------------------
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Evaluate ``closure`` (forward and backward) once, check every child, then step every child.

        A child that defines ``check_step()`` (:class:`~torchbop.optim.Bop`, :class:`~torchbop.optim.Bop2ndOrder`)
        is asked, before any child steps, to raise whatever its step would raise; so when one child refuses the
        step, no child has stepped. Bop's own step then skips the gradient check its ``check_step`` made, so the
        gradients are still read once. A child without ``check_step`` (a torch optimizer) is not checked
        beforehand: an error of its own, such as Adam's for a sparse gradient, can still come after the children
        before it have stepped.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.check_step()
        for optimizer in self.optimizers:
            optimizer.step()
        return loss

    def check_step(self) -> None:
        """Run ``check_step()`` of every child that has one; raise the first refusal, changing nothing."""
        for optimizer in self.optimizers:
            check = getattr(optimizer, "check_step", None)
            if callable(check):
                check()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    # -- saving and loading: torch's format over all children ----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """The children's state in ``torch.optim.Optimizer``'s format, as one optimizer over all of them writes it.

        Returns ``{"state": {int: dict}, "param_groups": [dict, ...]}``. The groups are the children's saved groups,
        in the order of :attr:`param_groups` (every group of ``optimizers[0]``, then of ``optimizers[1]``, ...), and
        parameters are numbered 0, 1, 2, ... across them, in that order: exactly the numbering of one torch
        optimizer over the concatenated groups. Each group also holds ``"composite_child": i``, the index of the
        child it belongs to, which :meth:`load_state_dict` routes it by. Every child's part is the child's own
        ``state_dict()`` (hyperparameters, state tensors and their dtypes unchanged), renumbered.

        Why this shape: ``torch.distributed.checkpoint.state_dict.get_optimizer_state_dict`` and other tools that
        read optimizer state (resharding, state inspection, conversion to parameter names) assume it, pairing the
        n-th number with the n-th parameter of ``param_groups``.
        """
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        for i, optimizer in enumerate(self.optimizers):
            saved = optimizer.state_dict()
            number: dict[Any, int] = {}  # the child's ids -> the composite's, by position
            for group in saved["param_groups"]:
                start = sum(len(g["params"]) for g in groups)
                number.update((local, start + k) for k, local in enumerate(group["params"]))
                groups.append(
                    {
                        **{k: v for k, v in group.items() if k != "params"},
                        CHILD_KEY: i,
                        "params": [number[local] for local in group["params"]],
                    }
                )
            state.update({number[local]: value for local, value in saved["state"].items() if local in number})
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Load :meth:`state_dict`'s output, or the earlier ``{"optimizers": [...]}``; all or nothing.

        The saved groups go to the children their ``"composite_child"`` names, or, where the groups carry no such
        key (a state dict rebuilt by ``torch.distributed.checkpoint``, say), to the groups of :attr:`param_groups`
        in order, as torch's ``Optimizer.load_state_dict`` pairs them. Parameter ids may be any keys (ints, or the
        parameter names ``torch.distributed.checkpoint`` uses): they are paired with parameters by position. Every
        child's part is checked (group sizes; state shapes, for children with ``check_state_dict``) before any is
        loaded, so a refused load leaves every child as it was.

        Raises:
            ValueError: the state dict is of neither format, names another number of children, or a child's part
                does not fit that child (another model, or another split of its parameters).
        """
        if isinstance(state_dict, dict) and "optimizers" in state_dict and "param_groups" not in state_dict:
            states = self._split_legacy(state_dict["optimizers"])
        else:
            states = self._split(state_dict)
        # check every child before loading any, so that a refused load leaves all of them as they were
        for i, (optimizer, state) in enumerate(zip(self.optimizers, states)):
            sizes = [len(g["params"]) for g in state["param_groups"]]
            own = [len(g["params"]) for g in optimizer.param_groups]
            if sizes != own:
                raise ValueError(
                    f"The state dict of optimizers[{i}] ({type(optimizer).__name__}) holds param groups of "
                    f"{sizes} parameters, but that optimizer has groups of {own}; the checkpoint belongs to another "
                    "model or another split of its parameters. Nothing was loaded."
                )
            check = getattr(optimizer, "check_state_dict", None)
            if callable(check):
                check(state)
        for optimizer, state in zip(self.optimizers, states):
            optimizer.load_state_dict(state)

    def _split(self, state_dict: Any) -> list[dict[str, Any]]:
        """Torch's format, cut into one state dict per child (each numbered from 0, as the child writes it)."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        saved_state = state_dict.get("state") if isinstance(state_dict, dict) else None
        if not isinstance(groups, list) or not isinstance(saved_state, dict):
            found = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(
                f"Expected an optimizer state dict with 'state' and 'param_groups' (or 'optimizers', the format of "
                f"earlier torchbop versions), got {found}; pass what CompositeOptimizer.state_dict() returned."
            )
        n = len(self.optimizers)
        if any(CHILD_KEY in g for g in groups):
            owners = [g.get(CHILD_KEY) for g in groups]
            if not all(isinstance(o, int) and 0 <= o < n for o in owners) or sorted(owners) != owners:
                raise ValueError(
                    f"This CompositeOptimizer has {n} optimizers but the state dict's param groups belong to "
                    f"{CHILD_KEY} {owners}; it was saved by another combination of optimizers. Nothing was loaded."
                )
        else:
            owners = [i for i, o in enumerate(self.optimizers) for _ in o.param_groups]
            if len(groups) != len(owners):
                raise ValueError(
                    f"This CompositeOptimizer's optimizers have {len(owners)} param groups but the state dict holds "
                    f"{len(groups)}; it was saved by another combination of optimizers. Nothing was loaded."
                )
        states: list[dict[str, Any]] = [{"state": {}, "param_groups": []} for _ in range(n)]
        for owner, group in zip(owners, groups):
            child = states[owner]
            first = sum(len(g["params"]) for g in child["param_groups"])
            params = list(range(first, first + len(group["params"])))
            child["param_groups"].append(
                {**{k: v for k, v in group.items() if k not in ("params", CHILD_KEY)}, "params": params}
            )
            child["state"].update(
                {p: saved_state[key] for p, key in zip(params, group["params"]) if key in saved_state}
            )
        return states

    def _split_legacy(self, states: Any) -> list[dict[str, Any]]:
        """The format of earlier torchbop versions: ``{"optimizers": [each child's state_dict()]}``."""
        if not isinstance(states, list) or len(states) != len(self.optimizers):
            found = f"{len(states)} optimizer states" if isinstance(states, list) else "no 'optimizers' list"
            raise ValueError(
                f"This CompositeOptimizer has {len(self.optimizers)} optimizers but the state dict holds {found}."
            )
        for i, state in enumerate(states):
            if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
                raise ValueError(f"The state dict's optimizers[{i}] is not an optimizer state dict: {state!r:.80}")
        return states

    def __getstate__(self) -> dict[str, Any]:
        return {"optimizers": self.optimizers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.optimizers = state["optimizers"]
        Optimizer.__init__(self, [p for g in self.param_groups for p in g["params"]], defaults={})
        self._initialized = True

    def __repr__(self) -> str:
        inner = "\n".join("    " + repr(o).replace("\n", "\n    ") for o in self.optimizers)
        return f"{type(self).__name__}(\n{inner}\n)"
