"""Bounds on the work a small input can cause, and bounded readers for the files diffnas reads.

A recipe, a study, a genotype or a run's JSON outputs are small files; a hostile or broken one
must fail fast with a clear message, never hang, never fill the memory and never print megabytes.
Every limit here is listed in ``docs/reliability.md``; each error names the file and the limit.

* :func:`read_text` reads a regular file of at most ``limit`` bytes as UTF-8 (a FIFO, a device or a
  directory is refused without being opened for reading, so nothing blocks);
* :func:`load_yaml` is PyYAML's safe loader plus: duplicate keys refused (with their lines), nesting
  depth capped, and the size of the document *with every alias expanded* capped (alias bombs),
  both checked on the event stream before anything is built;
* :func:`load_json` turns any failure, deep nesting included, into a plain ``ValueError``;
* :func:`short` is how every message quotes a user's value: ``repr`` cut to a few dozen characters.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import DiffnasError

#: the largest recipe, study or training-recipe file read (bytes)
MAX_YAML_BYTES = 256 << 10
#: the largest genotype or JSON output (result.json, genotype.json) read (bytes)
MAX_JSON_BYTES = 16 << 20
#: the largest metrics.jsonl read (bytes)
MAX_JSONL_BYTES = 256 << 20
#: the largest checkpoint read (bytes; a sanity bound far above any supernet's checkpoint)
MAX_CHECKPOINT_BYTES = 64 << 30
#: the deepest nesting of mappings and lists in a YAML or JSON document
MAX_DEPTH = 64
#: mappings entries, list items and scalars in a YAML document, counting every alias expanded
MAX_NODES = 50_000
#: runs one study may expand to (checked before any run is enumerated)
MAX_STUDY_RUNS = 10_000
#: bytes a compressed benchmark file (NATS-Bench ``.pbz2``) may expand to
MAX_DECOMPRESSED_BYTES = 512 << 20
#: characters of a user's value quoted in a message
MAX_QUOTE = 60


def short(value: Any, limit: int = MAX_QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters (``...`` and the full length appended), so that
    no message ever prints a huge (or alias-expanded) value."""
    if isinstance(value, (dict, list, tuple, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value)
    except RecursionError:
        return f"<deeply nested {type(value).__name__}>"
    except ValueError:  # an integer of more digits than Python converts to text
        return f"<{type(value).__name__} too large to print>"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def clip(text: str, limit: int = 200) -> str:
    """``text`` (a message, not a value: no quotes added) cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def cap_message(text: str, limit: int = 2000) -> str:
    """A message cut to ``limit`` characters: the last defence against a huge value in a message."""
    return text if len(text) <= limit else f"{text[:limit]} ... (message cut, {len(text)} characters)"


class InputError(DiffnasError):
    """A file cannot be read within the limits (too large, not a regular file, not UTF-8, too deep)."""


def open_regular(path: str | os.PathLike, limit: int, what: str = "file") -> int:
    """Open ``path`` for reading without blocking and return the descriptor if it is a regular file
    of at most ``limit`` bytes; raise :class:`InputError` (or ``FileNotFoundError``) otherwise."""
    p = Path(path)
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", str(p))
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{what} {p} is not a regular file (a FIFO, socket or device); refusing to read it")
        if st.st_size > limit:
            raise InputError(f"{what} {p} is too large ({st.st_size} bytes; the limit is {limit} bytes)")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (see :func:`open_regular`)."""
    fd = open_regular(path, limit, what)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:  # it grew while we read
        raise InputError(f"{what} {path} is too large (more than {limit} bytes)")
    return data


def read_text(path: str | os.PathLike, limit: int, what: str = "file") -> str:
    """The UTF-8 text of a regular file of at most ``limit`` bytes."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None


# --------------------------------------------------------------------------- YAML


class LimitError(yaml.YAMLError):
    """A YAML document exceeds a limit (depth, expanded size) or repeats a key."""

    def __init__(self, message: str, mark: Any = None):
        super().__init__(message)
        self.message = message
        self.mark = mark

    def __str__(self) -> str:
        where = f" (line {self.mark.line + 1}, column {self.mark.column + 1})" if self.mark is not None else ""
        return f"{self.message}{where}"


_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when installed (much faster)


class BoundedLoader(_Base):  # type: ignore[misc, valid-type]
    """The safe loader, refusing duplicate keys (the constructor checks each mapping's keys)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # noqa: D102 - PyYAML's hook
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise LimitError(f"duplicate key {short(key_node.value)} (first at line {seen[key].line + 1})",
                                         key_node.start_mark)
                    seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _check_events(text: str) -> None:
    """One pass over the parser's events (no recursion, nothing built): the nesting depth and the
    number of values with every alias expanded (an alias bomb is a few lines that expand to
    billions), each refused as soon as it passes its limit.

    libyaml (PyYAML >= 6.0.4 bundles one) scans a flow collection's tokens ahead of its events and
    stops at its own cap of 1000 levels with a ``ScannerError`` before the depth check below sees
    level 65; that error is the same refusal, so the text is checked again with PyYAML's own parser,
    which yields events as it scans and so reports the first level past ``MAX_DEPTH``."""
    try:
        _check_event_stream(text, _Base)
    except yaml.MarkedYAMLError as exc:
        if _Base is yaml.SafeLoader or "nesting depth" not in str(exc.problem):
            raise
        _check_event_stream(text, yaml.SafeLoader)
        raise LimitError(f"nested more than {MAX_DEPTH} levels deep", exc.problem_mark) from None


def _check_event_stream(text: str, loader: Any) -> None:
    stack: list[list[Any]] = [[0, None]]  # per open collection: [expanded size so far, anchor]
    sizes: dict[str, int] = {}
    total = 0
    for ev in yaml.parse(text, Loader=loader):
        if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) > MAX_DEPTH:
                raise LimitError(f"nested more than {MAX_DEPTH} levels deep", ev.start_mark)
            stack.append([1, ev.anchor])
            n = 1
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            size, anchor = stack.pop()
            if anchor is not None:
                sizes[anchor] = size
            stack[-1][0] += size
            continue
        elif isinstance(ev, yaml.ScalarEvent):
            n = 1
            if ev.anchor is not None:
                sizes[ev.anchor] = 1
            stack[-1][0] += 1
        elif isinstance(ev, yaml.AliasEvent):
            if any(frame[1] == ev.anchor for frame in stack):
                raise LimitError(f"alias *{ev.anchor[:MAX_QUOTE]} refers to a collection that contains it (a cycle)",
                                 ev.start_mark)
            n = sizes.get(ev.anchor, 1)  # an undefined alias is reported by the loader
            stack[-1][0] += n
        else:
            continue
        total += n
        if total > MAX_NODES:
            raise LimitError(f"the document expands (aliases included) to more than {MAX_NODES} values", ev.start_mark)


def load_yaml(text: str) -> Any:
    """Parse YAML text: limits checked on the event stream first (:func:`_check_events`), then
    loaded with :class:`BoundedLoader`. Raises ``yaml.YAMLError`` subclasses."""
    _check_events(text)
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- JSON


def load_json(text: str) -> Any:
    """``json.loads`` whose every failure is a ``ValueError`` with a plain message; a document nested
    more than :data:`MAX_DEPTH` levels deep is refused (every reader of it may recurse)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    check_depth(data)
    return data


def check_depth(data: Any, limit: int = MAX_DEPTH) -> None:
    """Raise ``ValueError`` if lists and mappings in ``data`` nest more than ``limit`` levels deep
    (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > limit:
                raise ValueError(f"nested more than {limit} levels deep")
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))


def read_json(path: str | os.PathLike, what: str = "file", limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file, bounded; every failure is an :class:`InputError` naming the file."""
    try:
        text = read_text(path, limit, what)
        return load_json(text)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{what} {path} not found") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise InputError(f"{what} {path}: {exc}") from None


def read_jsonl(path: str | os.PathLike, what: str = "metrics file", limit: int = MAX_JSONL_BYTES,
               objects: bool = False) -> list[Any]:
    """The records of a JSON-lines file. A last line without its newline that does not parse (a
    writer killed mid-line) is dropped, as JSON-lines readers do; any other bad line is an error,
    as is (with ``objects``) a record that is not a JSON object."""
    try:
        text = read_text(path, limit, what)
    except FileNotFoundError:
        raise InputError(f"{what} {path} not found") from None
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    lines = text.split("\n")
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = load_json(line)
        except ValueError as exc:
            if n == len(lines):  # the unterminated last line: a truncated write
                break
            raise InputError(f"{what} {path}, line {n}: {exc}") from None
        if objects and not isinstance(record, dict):
            raise InputError(f"{what} {path}, line {n}: expected a JSON object (one record), got "
                             f"{type(record).__name__} {short(record)}")
        records.append(record)
    return records
