"""Validators and the strict cattrs converter shared by recipe and plugin configs.

Plugin authors use :func:`positive`, :func:`non_negative`, :func:`in_range`, :func:`one_of` and
``field(..., metadata={"help": ...})`` on their frozen attrs ``Config`` classes; every message names
its field so a recipe error reads ``'lr' must be > 0, got -1.0 @ recipe.trainer.weights_optimizer``.
"""

from __future__ import annotations

import collections.abc
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


_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence)


def _is_sequence_type(t: Any) -> bool:
    return t in _SEQUENCES or typing.get_origin(t) in _SEQUENCES


def _sequence_hook(conv: cattrs.Converter) -> Callable[[Any], Callable[[Any, Any], Any]]:
    """Lists and tuples from YAML lists only: cattrs would iterate any value (a string into its
    letters, ``3`` into Python's ``'int' object is not iterable``)."""
    from cattrs.cols import list_structure_factory

    def factory(t: Any) -> Callable[[Any, Any], Any]:
        origin, args = typing.get_origin(t) or t, typing.get_args(t)
        fixed = origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis)
        elem = Any if not args or fixed else args[0]
        items = list_structure_factory(list[elem], conv)  # per-item errors keep their index in the key path

        def hook(value: Any, _: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"expected a list, got {type(value).__name__} {short(value)}{_hint(value)}")
            if fixed:
                if len(value) != len(args):
                    raise ValueError(f"expected a list of {len(args)} values, got {len(value)}")
                return tuple(conv.structure(v, a) for v, a in zip(value, args))
            out = items(value, list[elem])
            return tuple(out) if origin is tuple else out
        return hook
    return factory


def make_converter() -> cattrs.Converter:
    """A private converter: unknown keys are errors, and bool/str/int/float/list are not coerced."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(typing.Any, lambda v, _: v)
    conv.register_structure_hook_factory(_is_sequence_type, _sequence_hook(conv))
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
    """Structure ``data`` into ``cls``; return ``(obj, [])`` or ``(None, [(message, path), ...])``
    with every problem of the block at once: unknown keys, missing keys, wrong types, values a
    field's converter or validator refuses, each at its own key path (one does not hide another)."""
    try:
        return CONVERTER.structure(data, cls), []
    except (ClassValidationError, IterableValidationError, TypeError, ValueError) as exc:
        if attrs.has(cls) and isinstance(data, dict):
            found = _block_problems(data, cls, path)
            if found:
                return None, found
        if isinstance(exc, (ClassValidationError, IterableValidationError)):
            return None, _cattrs_problems(exc, path)
        return None, [(_format(exc, cls), path)]


def _cattrs_problems(exc: Exception, path: str) -> list[tuple[str, str]]:
    problems = []
    for line in transform_error(exc, path=path, format_exception=_format):
        msg, _, where = line.rpartition(" @ ")
        problems.append((msg, where))
    return problems


def _block_problems(data: dict, cls: type, path: str) -> list[tuple[str, str]]:
    """Every problem of one mapping ``data`` for the attrs class ``cls``, in field order: unknown
    keys, then each field structured on its own (nested attrs blocks recursively), its converter and
    its validators run on its own value, so that one refused value does not hide the others; when
    all of that passes, the object is built (checks across fields, ``__attrs_post_init__``)."""
    import types

    fields = attrs.fields_dict(cls)
    order = {name: i for i, name in enumerate(fields)}
    hints = _types(cls)
    found: list[tuple[int, str, str]] = []
    extra = [k for k in data if k not in fields]
    if extra:
        found.append((-1, _format(ForbiddenExtraKeysError("", cls, set(map(str, extra))), cls), path))
    good: dict[str, Any] = {}  # the values that passed, as the object would hold them
    given: dict[str, Any] = {}  # the same before the fields' converters (what __init__ takes)
    for name, f in fields.items():
        where = f"{path}.{name}"
        if name not in data:
            if f.default is attrs.NOTHING:
                found.append((order[name], "required key missing", where))
            continue
        t = hints.get(name, f.type)
        if attrs.has(t) and isinstance(data[name], dict):
            value, probs = structure(data[name], t, where)
        else:
            try:
                value, probs = CONVERTER.structure(data[name], t), []
            except (ClassValidationError, IterableValidationError) as exc:
                value, probs = None, _cattrs_problems(exc, where)
            except (TypeError, ValueError) as exc:
                value, probs = None, [(_format(exc, t), where)]
        if not probs:
            given[name] = value
        if not probs and f.converter is not None:  # the field's own converter (attrs ``converter=``)
            try:
                value = f.converter(value)
            except Exception as exc:  # noqa: BLE001 - any converter failure is a bad value, reported at its key
                probs = [(_converter_message(data[name], exc), where)]
        found += [(order[name], msg, w) for msg, w in probs]
        if not probs:
            good[name] = value
    # each validator on its own value; the other fields as given, or their defaults
    values = {n: _default(f) for n, f in fields.items() if n not in good and f.default is not attrs.NOTHING}
    inst = types.SimpleNamespace(**values, **good)
    for name, value in good.items():
        f = fields[name]
        if f.validator is None:
            continue
        try:
            f.validator(inst, f, value)
        except (TypeError, ValueError) as exc:
            found.append((order[name], _format(exc, cls), f"{path}.{name}"))
        except Exception:  # noqa: BLE001 - a validator that needs the real object: it runs when it is built
            pass
    if not found:
        try:
            cls(**{(fields[n].alias or n): v for n, v in given.items()})
        except (TypeError, ValueError) as exc:  # a check across fields
            found.append((len(order), _format(exc, cls), path))
    return [(msg, where) for _, msg, where in sorted(found, key=lambda x: x[0])]


def _default(f: Any) -> Any:
    d = f.default
    if isinstance(d, attrs.Factory):  # type: ignore[arg-type]
        return d.factory(None) if d.takes_self else d.factory()
    return d


def _types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - an unresolvable annotation: what attrs holds
        return {f.name: f.type for f in attrs.fields(cls)}


def _converter_message(value: Any, exc: Exception) -> str:
    """A field converter's failure as a user reads it: the value and what it is, and the reason."""
    reason = str(exc.args[0]) if exc.args and isinstance(exc, (TypeError, ValueError)) else type(exc).__name__
    if isinstance(exc, TypeError) and "not iterable" in reason:
        return f"expected a list, got {type(value).__name__} {short(value)}"
    return f"invalid value {short(value)} ({type(value).__name__}): {clip(reason)}"


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
