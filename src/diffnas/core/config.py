"""Validators and the strict cattrs converter shared by recipe and plugin configs.

Plugin authors use :func:`positive`, :func:`non_negative`, :func:`in_range`, :func:`one_of` and
``field(..., metadata={"help": ...})`` on their frozen attrs ``Config`` classes; every message names
its field so a recipe error reads ``'lr' must be > 0, got -1.0 @ recipe.trainer.weights_optimizer``.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from typing import Any, Callable

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.v import transform_error

from .limits import clip, short


def help_field(default: Any = ..., help: str = "", schedulable: bool | None = None, **kw: Any) -> Any:  # noqa: A002
    """``attrs.field`` with a ``help`` text shown by ``diffnas plugins``; ``...`` means required.

    ``schedulable`` overrides whether the field starts in the component's ``hparams`` (where
    schedules write): by default every ``float`` field does (see
    :meth:`~diffnas.core.protocols.Component.schedulable_fields`); pass ``False`` for a float that is
    only read once (an initial scale), ``True`` for a non-float value a schedule may drive.
    """
    md = dict(kw.pop("metadata", {}) or {})
    md["help"] = help
    if schedulable is not None:
        md["schedulable"] = schedulable
    if default is ...:
        return attrs.field(metadata=md, **kw)
    return attrs.field(default=default, metadata=md, **kw)


def positive(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name!r} must be > 0, got {short(value)}")


def non_negative(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not value >= 0:
        raise ValueError(f"{attribute.name!r} must be >= 0, got {short(value)}")


def in_range(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable:
    """Validator: ``lo <= value <= hi`` (an open end excludes it); NaN is never in range."""
    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        ok = (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
        if not ok:
            lb, rb = ("(" if lo_open else "["), (")" if hi_open else "]")
            raise ValueError(f"{attribute.name!r} must be in {lb}{lo}, {hi}{rb}, got {short(value)}")
    return check


#: sane bounds of a network's size: far above any published search, far below what fails opaquely
channels = in_range(1, 2048)
cells = in_range(1, 128)
small_count = in_range(1, 16)

#: the bounds of a seed (torch generators take 64-bit seeds)
SEED_MAX = 2**63 - 1
seed_range = in_range(0, SEED_MAX)


def one_of(*choices: Any) -> Callable:
    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name!r} must be one of {', '.join(map(repr, choices))}, got {short(value)}")
    return check


def _strict_bool(value: Any, _: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise TypeError(f"expected a boolean (true/false), got {type(value).__name__} {value!r}")


def _strict_str(value: Any, _: Any) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string, got {type(value).__name__} {short(value)}")


#: a number written in e-notation without a dot, which YAML 1.1 reads as a string
_E_NOTATION = re.compile(r"\s*[-+]?(?:[0-9]+\.?|\.[0-9]+)[eE][-+]?[0-9]+\s*")


def _hint(value: Any) -> str:
    if isinstance(value, str) and _E_NOTATION.fullmatch(value):
        return " (write numbers like 1.0e-3: YAML reads 1e-3 as a string)"
    return ""


def _strict_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"expected an integer, got {type(value).__name__} {short(value)}{_hint(value)}")
    return value


#: the largest finite float32: every float of a recipe or a plugin's config must fit in it
FLOAT32_MAX = 3.4028234663852886e38


def _strict_float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__} {short(value)}{_hint(value)}")
    try:
        out = float(value)
    except OverflowError:  # an integer beyond the float range
        raise ValueError(f"expected a number, got an integer too large for a float ({short(value)})") from None
    if not math.isfinite(out):
        raise ValueError(f"expected a finite number, got {short(value)}")
    if abs(out) > FLOAT32_MAX:  # tensors and optimisers hold float32: beyond it a value overflows in the first step
        raise ValueError(f"expected a number within float32's range (|x| <= {FLOAT32_MAX:.4g}), got {short(value)}")
    return out


def make_converter() -> cattrs.Converter:
    """A private converter: unknown keys are errors, and bool/str/int/float are not coerced."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(typing.Any, lambda v, _: v)
    return conv


CONVERTER = make_converter()


def _format(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
        parts = []
        for key in sorted(map(str, exc.extra_fields))[:10]:
            near = difflib.get_close_matches(key, known, n=1)
            parts.append(short(key) + (f" (did you mean {near[0]!r}?)" if near else ""))
        more = f" and {len(exc.extra_fields) - 10} more" if len(exc.extra_fields) > 10 else ""
        return f"unknown key(s): {', '.join(parts)}{more}"
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, (TypeError, ValueError)) and exc.args:
        return str(exc.args[0])
    return f"invalid value ({type(exc).__name__}: {clip(str(exc))})"


def structure(data: Any, cls: type, path: str) -> tuple[Any, list[tuple[str, str]]]:
    """Structure ``data`` into ``cls``; return ``(obj, [])`` or ``(None, [(message, path), ...])``."""
    try:
        return CONVERTER.structure(data, cls), []
    except (ClassValidationError, IterableValidationError) as exc:
        checked = _validator_problems(data, cls, path)
        if checked:  # the values have the right types and validators refused some: name them all
            return None, checked
        problems = []
        for line in transform_error(exc, path=path, format_exception=_format):
            msg, _, where = line.rpartition(" @ ")
            problems.append((msg, where))
        return None, problems
    except (TypeError, ValueError) as exc:  # attrs validators run after structuring
        return None, _validator_problems(data, cls, path) or [(_format(exc, cls), path)]


def _validator_problems(data: Any, cls: type, path: str) -> list[tuple[str, str]]:
    """Every field a validator refuses, each at its own key path (attrs stops at the first): the
    data is structured again with validators off, then each field's validator runs on its own,
    nested attrs values included. Empty if that cannot be done (an ``__attrs_post_init__`` check
    refused the values), so the caller reports the one error it has."""
    with attrs.validators.disabled():
        try:
            obj = CONVERTER.structure(data, cls)
        except Exception:  # noqa: BLE001 - a post-init check or converter refused; report the original
            return []
    return validate_fields(obj, path)


def validate_fields(obj: Any, path: str) -> list[tuple[str, str]]:
    """``(message, key path)`` for every field of the attrs instance ``obj`` (and of nested attrs
    instances) whose validator refuses its value."""
    problems: list[tuple[str, str]] = []
    for f in attrs.fields(type(obj)):
        value, where = getattr(obj, f.name), f"{path}.{f.name}"
        if f.validator is not None:
            try:
                f.validator(obj, f, value)
            except (TypeError, ValueError) as exc:
                problems.append((_format(exc, type(obj)), where))
        if attrs.has(type(value)):
            problems += validate_fields(value, where)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if attrs.has(type(item)):
                    problems += validate_fields(item, f"{where}[{i}]")
    return problems


def unstructure(obj: Any) -> Any:
    return CONVERTER.unstructure(obj)
