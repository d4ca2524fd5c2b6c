"""Reader for the official NATS-Bench topology-space "simple" files (MIT; Dong et al., TPAMI 2021).

A "simple" folder (e.g. ``NATS-tss-v1_0-3ffb9-simple/``) holds ``meta.pickle.pbz2`` (``meta_archs``:
the 15,625 NB201 strings in index order) and one ``<index:06d>.pickle.pbz2`` per architecture:
``{'12': ..., '200': ...}`` (training budget in epochs), each with ``all_results[(dataset, seed)]``
holding per-epoch ``train_acc1es`` and ``eval_acc1es['<split>@<epoch>']`` plus ``params``, ``flop``
and ``latency``. Files compressed with bz2 or plain ``.pickle`` are both read.

**Safety.** The files are pickles, so they are read with a restricted unpickler that resolves only
the four globals these files use (``collections.OrderedDict``, ``numpy.dtype`` and numpy's scalar
reconstructor under its NumPy 1 and NumPy 2 module names); any other global raises
:class:`~diffnas.core.errors.DataError` instead of running code.

**Which numbers** (the semantics of the official API's ``get_more_info(..., is_random=False)``): the
mean over seeds of the last epoch's accuracy. ``train`` is the training accuracy; ``valid`` is the
``x-valid`` split (none for ``cifar10``, which trains on train+valid); ``test`` is ``ori-test`` for
``cifar10-valid`` and ``cifar10`` and ``x-test`` for ``cifar100`` and ``ImageNet16-120``.
"""

from __future__ import annotations

import bz2
import collections
import io
import pickle
from pathlib import Path
from typing import Any

from ..core.errors import DataError
from ..core import limits
from ..core.limits import InputError, read_bytes

DATASETS = ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120")
TEST_SPLIT = {"cifar10-valid": "ori-test", "cifar10": "ori-test", "cifar100": "x-test", "ImageNet16-120": "x-test"}

_ALLOWED: dict[tuple[str, str], Any] = {("collections", "OrderedDict"): collections.OrderedDict}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:  # numpy >= 2 keeps the reconstructor in numpy._core; numpy 1 in numpy.core
        from numpy._core.multiarray import scalar  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    return {("numpy", "dtype"): np.dtype, ("numpy.core.multiarray", "scalar"): scalar,
            ("numpy._core.multiarray", "scalar"): scalar}


def numpy_array_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array needs (``ndarray``, ``dtype`` and the array reconstructor under
    its NumPy 1 and NumPy 2 module names), and ``_codecs.encode``, which protocol-2 pickles written by
    Python 3 use to store bytes: the image batches of CIFAR-100 and ImageNet16 are such pickles. They
    rebuild arrays of plain numbers and byte strings and run no other code."""
    import codecs

    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct, ("_codecs", "encode"): codecs.encode}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that resolves only an allow-list of globals (never arbitrary classes).

    :param extra: more allowed globals, ``{(module, name): object}`` (e.g. :func:`numpy_array_globals`).
    :param what: what the files are, for the refusal message.
    """

    def __init__(self, file: Any, source: str = "?", extra: dict[tuple[str, str], Any] | None = None,
                 what: str = "NATS-Bench files", encoding: str = "ASCII"):
        super().__init__(file, encoding=encoding)
        self.source, self.what = source, what
        self.allowed = {**_ALLOWED, **_numpy_globals(), **(extra or {})}

    def find_class(self, module: str, name: str) -> Any:
        obj = self.allowed.get((module, name))
        if obj is None:
            raise DataError(f"{self.source}: refuses to load global {module}.{name} (only plain data, OrderedDict "
                            f"and numpy values are allowed in {self.what})")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.source}: persistent ids are not allowed")


def safe_load(path: str | Path) -> Any:
    """Load a (bz2-compressed) NATS-Bench pickle with :class:`SafeUnpickler`."""
    path = Path(path)
    try:
        raw = read_bytes(path, limits.MAX_DECOMPRESSED_BYTES, "NATS-Bench file")
        if path.suffix == ".pbz2":
            raw = _bunzip2(raw, path)
    except InputError as exc:
        raise DataError(str(exc)) from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    try:
        return SafeUnpickler(io.BytesIO(raw), str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # a truncated or foreign pickle
        raise DataError(f"{path}: not a NATS-Bench pickle ({type(exc).__name__}: {exc})") from None


def _bunzip2(raw: bytes, path: Path) -> bytes:
    """Decompress bz2 data (one or more streams), refusing to expand beyond
    ``limits.MAX_DECOMPRESSED_BYTES`` (a few KB of bz2 can expand to gigabytes)."""
    limit = limits.MAX_DECOMPRESSED_BYTES
    out = bytearray()
    while raw:
        dec = bz2.BZ2Decompressor()
        out += dec.decompress(raw, max_length=limit + 1 - len(out))
        if len(out) > limit or (not dec.eof and not dec.needs_input):
            raise DataError(f"{path}: decompresses to more than {limit} bytes (the limit for NATS-Bench files); "
                            f"refusing it")
        if not dec.eof:
            raise DataError(f"cannot read {path}: the compressed data is truncated")
        raw = dec.unused_data
    return bytes(out)


def _plain(x: Any) -> Any:
    """numpy scalars → Python numbers (for JSON)."""
    return x.item() if hasattr(x, "item") and not isinstance(x, (list, dict)) else x


class NATSTopology:
    """The NATS-Bench topology space from a "simple" folder; files are read on demand.

    :param directory: the folder with ``meta.pickle.pbz2`` and ``<index>.pickle.pbz2`` files.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise DataError(f"--nats-dir {self.directory}: not a directory")
        meta = safe_load(self._file("meta"))
        if not isinstance(meta, dict) or not isinstance(meta.get("meta_archs"), list):
            raise DataError(f"{self._file('meta')}: expected a dict with 'meta_archs' (a list of arch strings)")
        self.archs: list[str] = meta["meta_archs"]
        self.index_of = {a: i for i, a in enumerate(self.archs)}

    def _file(self, stem: str) -> Path:
        for suffix in (".pickle.pbz2", ".pickle"):
            p = self.directory / f"{stem}{suffix}"
            if p.exists():
                return p
        return self.directory / f"{stem}.pickle.pbz2"

    def index(self, arch: str) -> int:
        try:
            return self.index_of[arch]
        except KeyError:
            raise DataError(f"{arch!r} is not in {self._file('meta')}") from None

    def info(self, arch_or_index: str | int, hp: str = "200") -> dict[str, Any]:
        """Per dataset: ``{train_acc, valid_acc, test_acc, params_M, flops_M, latency_s, seeds}`` (means over
        seeds at the last of ``hp`` epochs); plus ``index`` and ``arch``."""
        index = arch_or_index if isinstance(arch_or_index, int) else self.index(arch_or_index)
        path = self._file(f"{index:06d}")
        data = safe_load(path)
        try:
            block = data[hp]
            results = block["all_results"]
        except (KeyError, TypeError):
            raise DataError(f"{path}: no results for the {hp}-epoch budget (keys: {list(data) if isinstance(data, dict) else '?'})") from None
        out: dict[str, Any] = {"index": index, "arch": block.get("arch_str", self.archs[index]), "epochs": int(hp)}
        for ds in DATASETS:
            runs = [r for (name, _seed), r in results.items() if name == ds]
            if not runs:
                continue
            last = int(runs[0]["epochs"]) - 1

            def mean(values: list[Any]) -> float | None:
                vals = [float(v) for v in values if v is not None]
                return sum(vals) / len(vals) if vals else None

            def split(r: dict, name: str) -> Any:
                return r["eval_acc1es"].get(f"{name}@{last}")

            out[ds] = {
                "train_acc": mean([r["train_acc1es"].get(last) for r in runs]),
                "valid_acc": mean([split(r, "x-valid") for r in runs]) if ds != "cifar10" else None,
                "test_acc": mean([split(r, TEST_SPLIT[ds]) for r in runs]),
                "params_M": _plain(runs[0]["params"]),
                "flops_M": _plain(runs[0]["flop"]),
                "latency_s": mean([_plain(r["latency"][0]) if r.get("latency") else None for r in runs]),
                "seeds": sorted(int(s) for (name, s) in results if name == ds),
            }
        return out
