"""``UserError``: a mistake in what the user asked for, as opposed to a bug in torchbop.

Every place that consumes user input (a recipe, a ``--set`` override, model arguments, a data folder, a checkpoint,
the hardware a run asks for) turns a failure of that input into a :class:`UserError` whose message says what is
wrong, which file, key or value, and the fix. The ``torchbop`` command prints that message on one line of stderr and
exits with status 2; the traceback appears only with ``torchbop --debug`` (or ``TORCHBOP_DEBUG=1``). Any other
exception is a bug and keeps its traceback.

From Python, :func:`torchbop.training.train` raises the same :class:`UserError`, chained (``__cause__``) to the
original exception.

Example:
    >>> with blame_user(ValueError, what="recipe my.yaml"):
    ...     raise ValueError("Unknown config key(s): epoch (did you mean 'epochs'?)")
    Traceback (most recent call last):
    ...
    torchbop.errors.UserError: recipe my.yaml: Unknown config key(s): epoch (did you mean 'epochs'?)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["UserError", "blame_user"]


class UserError(Exception):
    """The user's input is wrong; the message names it and the fix. ``torchbop`` exits 2 with the message alone."""


@contextmanager
def blame_user(*types: type[BaseException], what: str = "") -> Iterator[None]:
    """Re-raise exceptions of ``types`` raised in the block as :class:`UserError`, prefixed with ``what``.

    Use it only around code whose failures can only come from the input named by ``what`` (parsing a recipe,
    building a model from its arguments, reading a data file), so that a bug elsewhere keeps its traceback.
    """
    try:
        yield
    except UserError:
        raise
    except types as error:
        message = str(error) or type(error).__name__
        raise UserError(f"{what}: {message}" if what else message) from error
