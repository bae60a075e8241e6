"""Domains: what a setting may hold (type, range, choices), declared next to the setting and checked in one place.

A :class:`Domain` does three things with one declaration:

* ``check(key, value)`` returns the value typed (``"1e-4"`` -> 1e-4, ``3`` -> 3.0 for a real, ``32`` -> ``"32"`` for a
  choice of strings) or raises ``ValueError("Invalid KEY value: VALUE (expected ...)")``;
* called on the text a user typed (``domain("3")``), it parses it as a YAML scalar (as ``--set key=value`` does) and
  checks it: a domain is the ``type=`` of an ``argparse`` option, so a bad flag is one line and exit status 2;
* ``outside()`` lists texts outside the domain, which the tests feed to every setting (tests/test_domains.py).

Numbers are finite everywhere (NaN and infinity are refused, as ``torchbop.optim``'s ``validate_scalar`` does), and
``bool`` is never an ``int``. :func:`parse_scalar` and :func:`parse_assignments` are the one reading of
``key=value`` text shared by ``torchbop train --set`` and ``torchbop experiment --set``.

Example:
    >>> Int(1).check("epochs", 3), Real(0, 1, low_open=True).check("gamma", "1e-3")
    (3, 0.001)
    >>> Int(1).check("epochs", 1.5)
    Traceback (most recent call last):
    ...
    ValueError: Invalid epochs value: 1.5 (expected int >= 1, got float)
    >>> parse_assignments(["gamma=1e-3", "model_kwargs.width=0.5", "subset=null"])
    {'gamma': '1e-3', 'model_kwargs.width': 0.5, 'subset': None}
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Domain",
    "Int",
    "Real",
    "Bool",
    "Choice",
    "KeyOf",
    "Text",
    "Folder",
    "Parsed",
    "Mapping",
    "AnyOf",
    "parse_scalar",
    "parse_assignments",
    "check_known",
]


def parse_scalar(text: str) -> Any:
    """A YAML scalar (``3`` -> 3, ``true`` -> True, ``null``, ``none`` or nothing -> None); anything else stays
    text."""
    if not text.strip() or text.strip().lower() == "none":
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_assignments(items: list[str], what: str = "--set") -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: YAML scalar}``; ``ValueError`` naming the item without ``=`` or key."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Invalid {what} {item!r}: expected key=value")
        values[key.strip()] = parse_scalar(text)
    return values


def check_known(owner: str, values: Iterable[str], known: Iterable[str]) -> None:
    """``ValueError`` naming every key of ``values`` that is not ``known``, with the closest known one.

    Example:
        >>> check_known("TrainConfig", ["gama"], ["gamma", "threshold"])
        Traceback (most recent call last):
        ...
        ValueError: TrainConfig has no setting 'gama' (did you mean 'gamma'?)
    """
    known = list(known)
    unknown = [k for k in values if k not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    listing = "" if any("did you mean" in h for h in hints) else f" (its settings: {', '.join(known)})"
    raise ValueError(f"{owner} has no setting {', '.join(hints)}{listing}")


class Domain:
    """Base: ``none`` admits ``None``; subclasses define ``kind`` (type words), ``_typed`` and ``_inside``."""

    none: bool = False
    kind = "value"

    def describe(self) -> str:
        """What the domain holds, in words: ``"int >= 1"``."""
        return self.kind + (" or null" if self.none else "")

    def check(self, key: str, value: Any, ranges: bool = True) -> Any:
        """``value`` typed, or ``ValueError`` naming ``key``; ``ranges=False`` checks the type only."""
        if value is None:
            if self.none:
                return None
            raise ValueError(f"Invalid {key} value: None (expected {self.describe()}; null is not allowed)")
        typed = self._typed(value)
        if typed is _WRONG_TYPE:
            raise ValueError(f"Invalid {key} value: {value!r} (expected {self.describe()}, got {type(value).__name__})")
        problem = self._inside(typed) if ranges else ""
        if problem:
            raise ValueError(f"Invalid {key} value: {typed!r} (expected {problem})")
        return typed

    def parse_text(self, text: str) -> Any:
        """What typed ``text`` means before the check: a YAML scalar (text domains keep the text as typed)."""
        return parse_scalar(text)

    def __call__(self, text: str) -> Any:  # argparse's type=
        try:
            return self.check("", self.parse_text(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).replace("Invalid  value: ", "invalid value ")) from None

    def outside(self) -> list[str]:
        """Texts outside the domain (``"null"`` where ``None`` is not allowed)."""
        return [] if self.none else ["null"]

    def _typed(self, value: Any) -> Any:
        return value

    def _inside(self, value: Any) -> str:  # noqa: ARG002
        """Empty when ``value`` (already typed) is inside, else what was expected."""
        return ""


_WRONG_TYPE = object()
_YAML_BOOLS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Int(Domain):
    low: int | None = None
    high: int | None = None
    none: bool = False

    @property
    def kind(self) -> str:  # type: ignore[override]
        if self.low is not None and self.high is not None:
            return f"int in [{self.low}, {self.high}]"
        return (
            "int"
            + (f" >= {self.low}" if self.low is not None else "")
            + (f" <= {self.high}" if self.high is not None else "")
        )

    def _typed(self, value: Any) -> Any:
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else _WRONG_TYPE

    def _inside(self, value: int) -> str:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"an integer {self.kind[4:]}"
        return ""

    def outside(self) -> list[str]:
        bad = [*super().outside(), "1.5", "abc", "true"]
        bad += [str(self.low - 1)] if self.low is not None else []
        return bad + ([str(self.high + 1)] if self.high is not None else [])


@dataclass(frozen=True)
class Real(Domain):
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    none: bool = False

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"float {self._range()}"

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else "(finite)"

    def _typed(self, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return _WRONG_TYPE
        return float(value) if _number(value) else _WRONG_TYPE

    def _inside(self, value: float) -> str:
        ok = math.isfinite(value)
        if self.low is not None:
            ok = ok and (value > self.low if self.low_open else value >= self.low)
        if self.high is not None:
            ok = ok and (value < self.high if self.high_open else value <= self.high)
        if ok:
            return ""
        if self.low is not None and self.high is not None:
            return f"a number {self._range()}"
        return self._range() if math.isfinite(value) else f"a finite number {self._range()}"

    def outside(self) -> list[str]:
        bad = [*super().outside(), "nan", "inf", "abc"]
        bad += [f"{self.low - 1:g}" if not self.low_open else f"{self.low:g}"] if self.low is not None else []
        return bad + ([f"{self.high + 1:g}"] if self.high is not None else [])


@dataclass(frozen=True)
class Bool(Domain):
    none: bool = False
    kind = "bool"

    def _typed(self, value: Any) -> Any:
        return value if isinstance(value, bool) else _WRONG_TYPE

    def outside(self) -> list[str]:
        return [*super().outside(), "2", "maybe"]


@dataclass(frozen=True)
class Choice(Domain):
    """One of ``choices``; ``hint`` maps a refused value to advice (``{"16": "use bf16-mixed"}``)."""

    choices: tuple[Any, ...] = ()
    none: bool = False
    hint: tuple[tuple[str, str], ...] = ()

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(map(repr, self.choices))

    def _typed(self, value: Any) -> Any:
        if all(isinstance(c, str) for c in self.choices):
            if _number(value):
                return str(value)  # precision: 32 -> "32"
            if isinstance(value, bool):  # YAML 1.1 reads an unquoted off/no/on/yes as a bool: the choice it spelled
                spelled = [c for c in _YAML_BOOLS[value] if c in self.choices]
                return spelled[0] if spelled else value
        return value

    def _inside(self, value: Any) -> str:
        if value in self.choices and type(value) in {type(c) for c in self.choices}:
            return ""
        advice = dict(self.hint).get(str(value))
        return self.kind + (f"; {advice}" if advice else "")

    def outside(self) -> list[str]:
        return [*super().outside(), "no-such-choice", *(k for k, _ in self.hint)]


@dataclass(frozen=True)
class KeyOf(Choice):
    """A key of ``registry`` as it is when the value is checked: a model registered at run time
    (``MODELS["my_net"] = MyNet``) is a valid choice from then on."""

    registry: Any = None

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(map(repr, self.registry))

    def _typed(self, value: Any) -> Any:
        return value

    def _inside(self, value: Any) -> str:
        return "" if isinstance(value, str) and value in self.registry else self.kind


@dataclass(frozen=True)
class Text(Domain):
    """A non-empty string, not matching ``forbid`` (a regular expression), described by ``rule``."""

    forbid: str = ""
    rule: str = "non-empty text"
    none: bool = False
    examples: tuple[str, ...] = ()  # texts outside the domain beyond the empty one
    numbers: bool = True  # a number is taken as its text (name: 123 -> "123")

    @property
    def kind(self) -> str:  # type: ignore[override]
        return f"str: {self.rule}"

    def _typed(self, value: Any) -> Any:
        if _number(value) and self.numbers:
            return str(value)
        return value if isinstance(value, str) else _WRONG_TYPE

    def parse_text(self, text: str) -> Any:
        return text

    def _inside(self, value: str) -> str:
        return self.rule if not value.strip() or (self.forbid and re.search(self.forbid, value)) else ""

    def outside(self) -> list[str]:  # as typed text, "null" is a name like any other
        return [" ", *self.examples]


@dataclass(frozen=True)
class Folder(Text):
    """A folder's path: nothing on its way (itself or a parent) is a file. It need not exist yet."""

    rule: str = "a folder path"

    def _inside(self, value: str) -> str:
        if not value.strip():
            return self.rule
        path = Path(value).expanduser()
        for part in (path, *path.parents):
            if part.exists() and not part.is_dir():
                return f"{self.rule}; {part} is a file"
        return ""

    def outside(self) -> list[str]:
        return [*super().outside(), "{file}", "{file}/sub"]  # {file}: an existing file, filled in by the tests


@dataclass(frozen=True)
class Parsed(Text):
    """Text that ``parse`` accepts (``parse`` raises ``ValueError`` naming the value, which is the message)."""

    parse: Callable[[str], Any] = str

    def check(self, key: str, value: Any, ranges: bool = True) -> Any:
        value = super().check(key, value, ranges)
        if ranges and value is not None:
            self.parse(value)
        return value


@dataclass(frozen=True)
class Mapping(Domain):
    """A mapping with text keys (``model_kwargs``); what the values may be is the consumer's to check."""

    none: bool = False
    kind = "a mapping of names to values"

    def _typed(self, value: Any) -> Any:
        return dict(value) if isinstance(value, dict) and all(isinstance(k, str) for k in value) else _WRONG_TYPE

    def outside(self) -> list[str]:
        return [*super().outside(), "3", "[1, 2]"]


@dataclass(frozen=True)
class AnyOf(Domain):
    """The union of ``domains`` (the first that holds the value types it), described by ``rule``."""

    domains: tuple[Domain, ...] = ()
    rule: str = ""
    none: bool = False
    examples: tuple[str, ...] = ()

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.rule

    def _typed(self, value: Any) -> Any:
        for domain in self.domains:
            try:
                return domain.check("", value)
            except ValueError:
                continue
        return _WRONG_TYPE if not any(d._typed(value) is not _WRONG_TYPE for d in self.domains) else value

    def _inside(self, value: Any) -> str:
        for domain in self.domains:
            try:
                domain.check("", value)
                return ""
            except ValueError:
                continue
        return self.rule

    def outside(self) -> list[str]:
        return [*super().outside(), "abc", *self.examples]
