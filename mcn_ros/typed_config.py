"""Typed settings: frozen stdlib dataclasses validated by pydantic v2, read from and written to YAML shape.

The project's settings (model, training, node) are plain frozen dataclasses. Their field annotations carry
the constraints, pydantic style (``Annotated[int, Field(ge=1)]``, ``one_of(...)``, ``AfterValidator``);
checks that relate several fields live in ``__post_init__`` and raise ``ValueError("field: reason")``.

- :func:`build` makes an instance from a plain mapping (the YAML shape): nested mappings become nested
  dataclasses, lists become tuples. Unknown keys, missing fields, wrong types and violated constraints raise
  one error (:class:`ConfigError` or the caller's class) whose message names the dotted field, e.g.
  ``detection.classes[3]: 'foo' is not a COCO class name`` or ``optim.lr: must be > 0, got -1``.
- :func:`check_fields`, called from ``__post_init__``, applies the same field checks to an instance made
  directly or with :func:`dataclasses.replace` (and normalises its values, e.g. lists to tuples).
- :func:`to_dict` turns an instance back into that plain mapping (lists for tuples), which :func:`build`
  reads back to an equal instance.

YAML semantics: scalars are never converted (an integer field rejects ``true``, ``2.0`` and ``"2"``; an
integer is a valid float; floats must be finite); only containers are (list to tuple, mapping to dataclass).
Files and override values are read as YAML 1.2 reads numbers: ``1e-3`` is a float (PyYAML, a YAML 1.1
parser, reads a number with an exponent but no dot, or no sign after the ``e``, as a string).
This module imports neither torch nor ROS.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, SchemaValidator

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration; the message names the offending field."""


def build(cls: type[T], data: Any, *, where: str = "", error: type[ValueError] = ConfigError) -> T:
    """Validate ``data`` (a mapping in the YAML shape, or an instance) and return a ``cls`` instance.

    ``where`` prefixes the field paths of messages (e.g. ``"model"``); any problem raises ``error``.
    """
    root: type = cls  # (mypy does not see that a type[T] is hashable)
    try:
        return typing.cast(T, _validator(root).validate_python(data))
    except ValidationError as exc:
        raise error(_describe(exc, root, where)) from None


def check_fields(obj: Any, error: type[ValueError] = ConfigError) -> None:
    """Validate (and normalise in place) the fields of a dataclass instance; for ``__post_init__``.

    Values that :func:`build` produced pass unchanged; values given in code are checked as if read from YAML,
    so that a dataclass made directly or with :func:`dataclasses.replace` obeys the same constraints.
    """
    cls: type = type(obj)
    for name, validator in _field_validators(cls).items():
        try:
            value = validator.validate_python(getattr(obj, name))
        except ValidationError as exc:
            raise error(_describe(exc, cls, "", prefix=(name,))) from None
        object.__setattr__(obj, name, value)


def to_dict(obj: Any) -> dict[str, Any]:
    """The plain mapping (YAML/JSON shape: dicts, lists, strings, numbers) of a dataclass instance."""
    cls: type = type(obj)
    result = _adapter(cls).dump_python(obj, mode="json")
    assert isinstance(result, dict)
    return result


def one_of(*choices: object) -> AfterValidator:
    """Constraint for ``Annotated``: the value must be one of ``choices``."""
    allowed = ", ".join(str(c) for c in choices)

    def check(value: T) -> T:
        if value not in choices:
            raise ValueError(f"must be one of {allowed}, got {value!r}")
        return value

    return AfterValidator(check)


# ------------------------------------------------------------------------------------------------------------
# Files, merges and command-line overrides of YAML-shaped mappings.


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's floats in scientific notation (``1e-3``, ``5E+4``, ``2.5e3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """The data of a YAML document, numbers read as YAML 1.2 reads them (see the module doc)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: plain data only


def read_yaml_mapping(
    path: str | Path, what: str, error: type[ValueError] | None = None, allow_empty: bool = False
) -> dict[str, Any]:
    """Read a YAML file whose top level is a mapping (``allow_empty``: or nothing, read as an empty mapping);
    any failure raises ``error`` (default :class:`ConfigError`) with one message naming ``what`` and the
    file."""
    path = Path(path)
    error = error or ConfigError
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:  # a weights or checkpoint file given for a config, say
        raise error(
            f"{what} {path}: not a YAML text file (byte {exc.start} is not UTF-8 text); a binary file?"
        ) from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path}: invalid YAML: {exc}") from exc
    if data is None and allow_empty:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping at the top level")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in: mappings merge key by key, anything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overrides(
    data: Mapping[str, Any], overrides: Sequence[str], error: type[ValueError] = ConfigError
) -> dict[str, Any]:
    """A copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    result = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise error(f"override {item!r}: expected key=value (e.g. optim.lr=0.001)")
        try:
            value = load_yaml(text)
        except yaml.YAMLError as exc:
            raise error(f"override {item!r}: invalid YAML value: {exc}") from exc
        parts = key.strip().split(".")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise error(f"override {item!r}: {'.'.join(parts[: depth + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return result


# ------------------------------------------------------------------------------------------------------------
# pydantic schemas with YAML semantics, and one-line messages from pydantic's errors.


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


@functools.cache
def _validator(cls: type) -> SchemaValidator:
    return _yaml_validator(_adapter(cls))


@functools.cache
def _field_validators(cls: type) -> dict[str, SchemaValidator]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: _yaml_validator(TypeAdapter(hints[f.name])) for f in dataclasses.fields(cls) if f.init}


def _yaml_validator(adapter: TypeAdapter[Any]) -> SchemaValidator:
    """pydantic's validator of the adapter's type, with strict scalars, finite floats, no unknown keys."""
    schema = copy.deepcopy(adapter.core_schema)
    _yaml_semantics(schema)
    return SchemaValidator(schema)


def _yaml_semantics(node: Any) -> None:
    """Set the defaults of a pydantic core schema (nested dicts) for YAML input, in place.

    Scalars are strict, floats finite and dataclasses forbid unknown keys, unless a schema says otherwise.
    Containers stay lax: a list validates a tuple, a mapping a dataclass (strict dataclasses would take
    only instances). One pass here covers every dataclass, also those from modules that set no pydantic
    config of their own (e.g. mcn_training.losses.LossWeights).
    """
    if isinstance(node, list):
        for item in node:
            _yaml_semantics(item)
    elif isinstance(node, dict):
        kind = node.get("type")
        if kind in ("int", "float", "bool", "str"):
            node.setdefault("strict", True)
        if kind == "float":
            node.setdefault("allow_inf_nan", False)
        if kind == "dataclass-args":
            node.setdefault("extra_behavior", "forbid")
        for key, value in node.items():
            if key not in ("metadata", "serialization"):
                _yaml_semantics(value)


#: What a value of the wrong type was expected to be, by pydantic error type.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a finite number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "string_type": "a string",
    "dataclass_type": "a mapping",
    "dict_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
}
#: Bound constraints: pydantic error type -> (context key, operator).
_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
    "multiple_of": ("multiple_of", "a multiple of"),
}
#: A message that starts with the field it is about: ``name: ...`` or ``[index]: ...``.
_SUBFIELD = re.compile(r"(?P<name>[A-Za-z_]\w*)?(?P<index>(\[\d+\])*): ")


def _describe(exc: ValidationError, root: type, where: str, prefix: tuple[str | int, ...] = ()) -> str:
    """One line for the first error: ``dotted.path[i]: reason, got value``."""
    errors = exc.errors(include_url=False)
    detail = errors[0]
    loc = (*prefix, *detail["loc"])
    if detail["type"] == "missing" and loc and isinstance(loc[-1], int):  # a list too short for its tuple
        loc = loc[:-1]
        expected = len(detail["input"]) + sum(
            e["type"] == "missing" and e["loc"][:-1] == detail["loc"][:-1] for e in errors
        )
        message = f"expected {expected} values, got {detail['input']!r}"
    else:
        message = _reason(detail, root, loc)
    # A validator's message may name a field (or item) below the failing location: extend the path with it.
    match = _SUBFIELD.match(message)
    if match and (match["index"] or match["name"] in _field_names(_dataclass_at(root, loc))):
        loc = (*loc, *([match["name"]] if match["name"] else []))
        path = _path(where, loc) + match["index"]
        return f"{path}: {message[match.end() :]}"
    path = _path(where, loc)
    return f"{path}: {message}" if path else message


def _reason(detail: ErrorDetails, root: type, loc: tuple[str | int, ...]) -> str:
    kind, value, ctx = detail["type"], detail["input"], detail.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "missing":
        return "missing (required)"
    if kind == "unexpected_keyword_argument":
        allowed = _field_names(_dataclass_at(root, loc[:-1]))
        return f"unknown field (allowed: {', '.join(allowed)})" if allowed else "unknown field"
    if kind in _EXPECTED:
        return "must not be null" if value is None else f"expected {_EXPECTED[kind]}, got {value!r}"
    if kind in _BOUNDS:
        key, operator = _BOUNDS[kind]
        return f"must be {operator} {_number(ctx[key])}, got {value!r}"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return f"must not be empty, got {value!r}"
    if kind == "too_long":
        return f"too many values (at most {ctx['max_length']}), got {value!r}"
    return f"{detail['msg'][:1].lower()}{detail['msg'][1:]}, got {value!r}"


def _number(value: Any) -> str:
    """A bound as written in YAML: ``0`` rather than ``0.0``."""
    return format(value, "g") if isinstance(value, float) else str(value)


def _path(where: str, loc: tuple[str | int, ...]) -> str:
    path = where
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _dataclass_at(root: type, loc: tuple[str | int, ...]) -> type | None:
    """The dataclass that the field path ``loc`` leads to from ``root``, or None."""
    tp: Any = root
    for part in loc:
        tp = _dataclass_in(tp)
        if tp is None or not isinstance(part, str):
            return None
        tp = typing.get_type_hints(tp, include_extras=True).get(part)
    return _dataclass_in(tp)


def _dataclass_in(tp: Any) -> type | None:
    """``tp`` if it is a dataclass, else the dataclass inside ``Annotated[...]`` or ``X | None``."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _dataclass_in(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        found = [c for c in map(_dataclass_in, typing.get_args(tp)) if c is not None]
        return found[0] if len(found) == 1 else None
    return None


def _field_names(cls: type | None) -> list[str]:
    return [] if cls is None else [f.name for f in dataclasses.fields(cls) if f.init]
