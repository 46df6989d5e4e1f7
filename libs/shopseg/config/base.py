"""What every configuration section shares: the pydantic base, its value types and rules.

A section is a pydantic model that forbids unknown keys and converts nothing
silently (strict: `true` is not an integer, `"4"` is not a number). Ranges
are field constraints; a rule that spans fields lives in the section's
`rules()`, which raises `Problem(key, message)` naming the key it is about.
`load_config` turns every failure into a `ConfigError` that names the file or
`--set` argument, the dotted key and the problem.
"""

from __future__ import annotations

import datetime as dt
import re
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from annotated_types import Ge, Gt, Interval
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.fields import FieldInfo

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
LAKEHOUSE_ROOT = "${lakehouse.root}"


class ShopsegError(RuntimeError):
    """A failure the user can act on; the CLI prints its message without a traceback."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


class Problem(ValueError):
    """A rule broken at `key`, dotted and relative to the section that checks it."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def check(cond: bool, key: str, message: str) -> None:
    """Raise `Problem(key, message)` unless `cond` holds."""
    if not cond:
        raise Problem(key, message)


def is_uri(path: str) -> bool:
    """True for `scheme:/...` locations (object stores, DBFS, file URIs)."""
    return bool(_URI.match(path))


class Section(BaseModel):
    """A configuration section: unknown keys refused, no silent conversion."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    @model_validator(mode="after")
    def _rules_hold(self) -> Section:
        self.rules()
        return self

    def rules(self) -> None:
        """Rules that span this section's fields; raise `Problem` (via `check`)."""


# --------------------------------------------------------------------------- value types


class _PathMarker:
    """Marks a field as a local path: relative values resolve against their file."""

    def __repr__(self) -> str:
        return "PATH"


PATH = _PathMarker()


def _iso_date(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return value
    return value


def _text_values(value: Any) -> Any:
    """Spark properties and reader options are strings; YAML reads `4` as an int."""
    if not isinstance(value, dict):
        return value
    return {
        str(k): (str(v).lower() if isinstance(v, bool) else str(v))
        if isinstance(v, int | float | bool)
        else v
        for k, v in value.items()
    }


def _one_expression(text: Any) -> Any:
    """A Spark SQL expression from a configuration file, checked lexically: one
    expression (no top-level comma, alias or FROM), no statement separator,
    comment or subquery. Conf files are code: this stops mistakes and pasted
    statements, not a hostile editor."""
    if not isinstance(text, str):
        return text
    # String literals and quoted identifiers say nothing about the structure.
    bare = re.sub(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`", "''", text)
    if ";" in bare:
        raise ValueError(f"{text!r}: a ';' would end the expression (one expression only)")
    if "--" in bare or "/*" in bare:
        raise ValueError(f"{text!r}: SQL comments are not allowed in an expression")
    if re.search(r"\bselect\b", bare, re.IGNORECASE):
        raise ValueError(f"{text!r}: a subquery (SELECT) is not allowed in an expression")
    depth = 0
    for i, char in enumerate(bare):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            raise ValueError(f"{text!r}: a ')' closes more than was opened")
        word_starts = i == 0 or not (bare[i - 1].isalnum() or bare[i - 1] == "_")
        keyword = word_starts and re.match(r"(as|from)\b", bare[i:], re.IGNORECASE)
        if depth == 0 and (char == "," or keyword):
            raise ValueError(f"{text!r}: more than one expression (a top-level ',', AS or FROM)")
    if depth:
        raise ValueError(f"{text!r}: a '(' is never closed")
    return text


SqlExpression = Annotated[str, AfterValidator(_one_expression)]
"""One Spark SQL expression (see `_one_expression`)."""
PathStr = Annotated[str, PATH]
Date = Annotated[dt.date, BeforeValidator(_iso_date)]
TextMap = Annotated[
    dict[str, str],
    BeforeValidator(_text_values),
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
    ),
]
Positive = Annotated[int, Gt(0)]
PositiveFloat = Annotated[float, Gt(0)]
NonNegative = Annotated[float, Ge(0)]
Share = Annotated[float, Interval(ge=0, le=1)]
OpenShare = Annotated[float, Interval(gt=0, lt=1)]
Confidence = Annotated[float, Interval(gt=0.5, lt=1)]


def bounds_message(metadata: list[Any]) -> str | None:
    """How a field's range constraints read in an error ("must be within 0..1")."""
    low = high = None
    low_open = high_open = False
    for item in metadata:
        for attr, is_low, is_open in (("gt", 1, 1), ("ge", 1, 0), ("lt", 0, 1), ("le", 0, 0)):
            value = getattr(item, attr, None)
            if value is None:
                continue
            if is_low:
                low, low_open = value, bool(is_open)
            else:
                high, high_open = value, bool(is_open)
    if low is not None and high is not None:
        return f"must be within {low}..{high}" + (" (exclusive)" if low_open and high_open else "")
    if low is not None:
        if low == 0:
            return "must be positive" if low_open else "must be >= 0"
        return f"must be {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"must be {'<' if high_open else '<='} {high}"
    return None


# --------------------------------------------------------------------------- errors


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """An annotation without `Annotated` and `| None`, and the metadata peeled off."""
    metadata: list[Any] = []
    while True:
        if typing.get_origin(tp) is Annotated:
            base, *extra = typing.get_args(tp)
            tp, metadata = base, metadata + extra
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(inner) != 1:
                return tp, metadata
            tp = inner[0]
        else:
            return tp, metadata


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def child(tp: Any, part: str | int) -> tuple[Any, list[Any], FieldInfo | None] | None:
    """One key down from the annotation `tp`: the annotation there, its constraints and
    (for a section's field) its field info; None when `part` is not a key there."""
    base, _ = _unwrap(tp)
    if _is_section(base) and isinstance(part, str) and part in base.model_fields:
        info = base.model_fields[part]
        return info.annotation, list(info.metadata), info
    if typing.get_origin(base) is dict:
        return typing.get_args(base)[1], [], None
    if typing.get_origin(base) is list and isinstance(part, int):
        return typing.get_args(base)[0], [], None
    return None


def field_at(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[Any, list[Any], int]:
    """Walk `loc` from `root`: the annotation there, its constraints, and how many
    parts of `loc` were keys (the rest name members of a union)."""
    tp: Any = root
    metadata: list[Any] = []
    for used, part in enumerate(loc):
        found = child(tp, part)
        if found is None:
            return tp, metadata, used
        tp, metadata, _ = found
        metadata += _unwrap(tp)[1]
    return tp, metadata, len(loc)


def dotted(loc: Sequence[str | int]) -> str:
    """`('sources', 'log', 'columns', 0)` -> `sources.log.columns[0]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def type_name(tp: Any) -> str:
    """How an expected type reads in an error: "an integer", "one of 'a', 'b'"."""
    tp, _ = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is dict or _is_section(tp):
        return "a mapping"
    if origin is list:
        return "a list"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}
    names.update({dt.date: "a date (YYYY-MM-DD)", type(None): "null"})
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _message(error: Any, tp: Any, metadata: list[Any]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return bounds_message(metadata) or error["msg"]
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return "needs at least one value" if least == 1 else f"needs at least {least} values"
    if kind == "string_too_short":
        return "is required"
    if kind == "string_pattern_mismatch":
        return f"{value!r} does not match {ctx.get('pattern')}"
    return f"expected {type_name(tp)}, got {value!r} ({type(value).__name__})"


def config_error(
    exc: ValidationError, origin: str, root: type[BaseModel], prefix: Sequence[str | int] = ()
) -> ConfigError:
    """The first problem pydantic found, as "origin: dotted.key: message"."""
    error = exc.errors()[0]
    loc = (*prefix, *error["loc"])
    if error["type"] == "extra_forbidden":
        parent, _, _ = field_at(root, loc[:-1])
        known = ", ".join(_unwrap(parent)[0].model_fields)
        return ConfigError(f"{origin}: unknown key '{dotted(loc)}' (known keys here: {known})")
    tp, metadata, used = field_at(root, loc)
    key = dotted(loc[:used])
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, Problem) and problem.key:
        key = (
            f"{key}.{problem.key}" if key and not problem.key.startswith("[") else key + problem.key
        )
    message = _message(error, tp, metadata)
    return ConfigError(f"{origin}: {key}: {message}" if key else f"{origin}: {message}")
