"""A NAS-Bench-301 surrogate for the DARTS search space (CIFAR-10), run with onnxruntime.

The package embeds the surrogate (``data/embedded/nb301_surrogate/``: ``model_v2.onnx``,
``encoding_v2.json`` and its Apache-2.0 ``LICENSE-2.0.txt``, 2.8 MB), so DARTS-space cells are scored
offline; ``<data root>/nb301_surrogate/`` is used instead when it holds the two files. onnxruntime is
an optional dependency (``pip install diffnas[surrogate]``); it is imported only when a surrogate is
loaded, and its absence is reported with that command.

Input encoding (``../shared/data/README.md``): ``x_cat`` int32 ``[B, 34]`` in the order
``edge_normal_0..13, edge_reduce_0..13, inputs_node_normal_3..5, inputs_node_reduce_3..5`` (every key
prefixed ``NetworkSelectorDatasetInfo_COLON_darts_COLON_``; the json's alphabetical key order is *not*
the input order); the codes come from ``encoding_v2.json`` with an inactive edge ``#na#`` = 0. Edges
are numbered node by node: node 2 uses edges 0-1, node 3 edges 2-4, node 4 edges 5-8, node 5 edges
9-13, and an edge's index is its node's start plus its input node. ``inputs_node_*_k`` is the
``"i_j"`` pair (i < j) of the two inputs of node k. ``x_cont`` float32 ``[B, 1]`` is the epoch
(1..98). Output ``[B, 4]``: validation accuracy (0-1), validation cross-entropy, runtime (s), and an
undocumented fourth column.

Node numbering is the same as diffnas's DARTS genotypes (:mod:`diffnas.core.genotype`): nodes 0, 1
are the cell inputs and 2..5 the intermediate nodes, each with exactly two inputs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import DataError, DiffnasError
from ..core.genotype import Genotype
from ..core.limits import InputError, read_bytes, read_json, short
from ..data.root import data_root, embedded_path

PREFIX = "NetworkSelectorDatasetInfo_COLON_darts_COLON_"
MODEL_FILE = "model_v2.onnx"
ENCODING_FILE = "encoding_v2.json"
SUBDIR = "nb301_surrogate"
EDGE_START = {2: 0, 3: 2, 4: 5, 5: 9}
NUM_EDGES = 14
CELLS = ("normal", "reduce")
INPUT_KEYS: tuple[str, ...] = (
    tuple(f"edge_{c}_{i}" for c in CELLS for i in range(NUM_EDGES))
    + tuple(f"inputs_node_{c}_{k}" for c in CELLS for k in (3, 4, 5))
)
MAX_EPOCH = 98
NB301_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")


class SurrogateUnavailable(DiffnasError):
    """The surrogate files or onnxruntime are missing."""


def surrogate_dir(root: str | None = None) -> Path:
    """``<data root>/nb301_surrogate`` (see :func:`diffnas.data.root.data_root`) when it holds the
    model and its encoding, else the copy embedded in the package."""
    d = data_root(root) / SUBDIR
    if (d / MODEL_FILE).exists() and (d / ENCODING_FILE).exists():
        return d
    return embedded_path(SUBDIR)


def available(root: str | None = None) -> bool:
    """Whether the surrogate files and onnxruntime are both present."""
    d = surrogate_dir(root)
    if not ((d / MODEL_FILE).exists() and (d / ENCODING_FILE).exists()):
        return False
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def encode_cell(genotype: Genotype, cell: str, codes: dict[str, dict[str, int]] | None = None) -> tuple[list[Any], list[Any]]:
    """``(edge values [14], input pairs [3])`` of one DARTS cell: op names / ``"i_j"`` strings, or
    ``"#na#"``; mapped to integer codes when ``codes`` (the encoding json) is given."""
    if cell not in genotype.cells:
        raise DiffnasError(f"genotype has no {cell!r} cell (cells: {sorted(genotype.cells)}); the NB301 surrogate "
                           f"needs a DARTS-space genotype with 'normal' and 'reduce' cells")
    g = genotype.cells[cell]
    # the surrogate was fit on DARTS cells only: anything else would get a confident, meaningless score
    outside = sorted({dst for _, dst, _ in g.edges} - set(EDGE_START))
    if outside:
        raise DiffnasError(f"{cell} cell: node(s) {outside[:5]} have inputs; the NB301 space has intermediate nodes "
                           f"2..5 only")
    if tuple(g.concat) != (2, 3, 4, 5) or g.sum_nodes:
        raise DiffnasError(f"{cell} cell: its output concatenates {list(g.concat)[:8]}; the NB301 space's cells "
                           f"concatenate nodes [2, 3, 4, 5]")
    edges: list[Any] = ["#na#"] * NUM_EDGES
    pairs: list[Any] = []
    for node in (2, 3, 4, 5):
        ins = g.inputs_of(node)
        srcs = sorted(src for _, src in ins)
        if len(ins) != 2 or len(set(srcs)) != 2:
            raise DiffnasError(f"{cell} cell: node {node} must have exactly two distinct inputs for the NB301 "
                               f"surrogate, has {[(op, s) for op, s in ins]}")
        for op, src in ins:
            if not 0 <= src < node:
                raise DiffnasError(f"{cell} cell: node {node} reads node {src}; inputs must be 0..{node - 1}")
            if op not in NB301_OPS:
                raise DiffnasError(f"{cell} cell: op {op!r} on edge {src}->{node} is not in the NB301 space "
                                   f"({', '.join(NB301_OPS)})")
            edges[EDGE_START[node] + src] = op
        if node >= 3:
            pairs.append(f"{srcs[0]}_{srcs[1]}")
    if codes is not None:
        try:
            edges = [codes[f"{PREFIX}edge_{cell}_{i}"][v] for i, v in enumerate(edges)]
            pairs = [codes[f"{PREFIX}inputs_node_{cell}_{k}"][v] for k, v in zip((3, 4, 5), pairs)]
        except KeyError as exc:
            raise DataError(f"the NB301 encoding has no code for {short(exc.args[0])} ({cell} cell)") from None
    return edges, pairs


def encode(genotype: Genotype, codes: dict[str, dict[str, int]]) -> np.ndarray:
    """The surrogate's ``x_cat`` row (int32 ``[34]``) for a DARTS genotype."""
    en, pn = encode_cell(genotype, "normal", codes)
    er, pr = encode_cell(genotype, "reduce", codes)
    return np.asarray(en + er + pn + pr, dtype=np.int32)


#: the largest surrogate model read (bytes; the embedded one is under 3 MB)
MAX_MODEL_BYTES = 256 << 20


def read_encoding(path: Path) -> dict[str, dict[str, int]]:
    """``encoding_v2.json``, bounded (a regular file of at most ``MAX_JSON_BYTES``) and checked: for
    each input key, a mapping of value names to integer codes that fit the model's int32 input."""
    try:
        codes = read_json(path, "NB301 encoding file")
    except InputError as exc:
        raise DataError(str(exc)) from None
    if not isinstance(codes, dict):
        raise DataError(f"{path}: not an NB301 v2 encoding (expected a JSON object, got {type(codes).__name__})")
    missing_keys = [k for k in INPUT_KEYS if PREFIX + k not in codes]
    if missing_keys:
        raise DataError(f"{path}: not an NB301 v2 encoding (missing keys {missing_keys[:3]}...)")
    for k in INPUT_KEYS:
        table = codes[PREFIX + k]
        bad = (not isinstance(table, dict) or not table
               or any(isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**31 for v in table.values()))
        if bad:
            raise DataError(f"{path}: {PREFIX + k} must map value names to integer codes (0..2^31-1), got "
                            f"{short(table)}")
    return codes


class NB301Surrogate:
    """The NB301 surrogate: ``predict(genotypes)`` → predicted CIFAR-10 validation accuracy (0-1).

    :param directory: the folder with ``model_v2.onnx`` and ``encoding_v2.json``.
    :param threads: onnxruntime intra-op threads (small: the model is a few MB).
    """

    def __init__(self, directory: str | Path, threads: int = 1):
        self.directory = Path(directory)
        model, enc = self.directory / MODEL_FILE, self.directory / ENCODING_FILE
        missing = [str(p) for p in (model, enc) if not p.exists()]
        if missing:
            raise SurrogateUnavailable(f"NB301 surrogate file(s) missing: {', '.join(missing)} (the package embeds "
                                       f"them in diffnas/data/embedded/{SUBDIR}/; reinstall diffnas, or put them in "
                                       f"<data root>/{SUBDIR}/)")
        try:
            import onnxruntime as ort
        except ImportError:
            raise SurrogateUnavailable("onnxruntime is not installed; the NB301 surrogate needs it: "
                                       "pip install 'diffnas[surrogate]' (or pip install onnxruntime)") from None
        self.codes: dict[str, dict[str, int]] = read_encoding(enc)
        try:  # bounded and a regular file only (a FIFO or a device in its place is refused, not read)
            model_bytes = read_bytes(model, MAX_MODEL_BYTES, "NB301 surrogate model")
        except InputError as exc:
            raise DataError(str(exc)) from None
        except OSError as exc:
            raise DataError(f"cannot read {model}: {exc.strerror or exc}") from None
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DataError(f"cannot load {model}: {exc}") from None

    def encode(self, genotypes: Sequence[Genotype]) -> np.ndarray:
        """``x_cat`` int32 ``[B, 34]``."""
        return np.stack([encode(g, self.codes) for g in genotypes]).astype(np.int32)

    def predict_raw(self, genotypes: Sequence[Genotype], epoch: int = MAX_EPOCH) -> np.ndarray:
        """The model's float32 output ``[B, 4]`` (val accuracy, val cross-entropy, runtime, ?)."""
        if not 1 <= epoch <= MAX_EPOCH:
            raise DiffnasError(f"surrogate epoch must be in 1..{MAX_EPOCH}, got {epoch}")
        genotypes = list(genotypes)
        if not genotypes:
            return np.zeros((0, 4), dtype=np.float32)
        x_cat = self.encode(genotypes)
        x_cont = np.full((len(genotypes), 1), float(epoch), dtype=np.float32)
        (out,) = self.session.run(None, {"x_cat": x_cat, "x_cont": x_cont})
        return np.asarray(out)

    def predict(self, genotypes: Sequence[Genotype] | Genotype, epoch: int = MAX_EPOCH) -> np.ndarray | float:
        """Predicted validation accuracy in [0, 1]: a float for one genotype, an array for a list."""
        if isinstance(genotypes, Genotype):
            return float(self.predict_raw([genotypes], epoch)[0, 0])
        return self.predict_raw(genotypes, epoch)[:, 0].astype(np.float64)


@functools.lru_cache(maxsize=4)
def _load(directory: str) -> NB301Surrogate:
    return NB301Surrogate(directory)


def load_surrogate(root: str | None = None) -> NB301Surrogate:
    """The surrogate under ``<data root>/nb301_surrogate``, else the embedded one (cached per folder).

    :raises SurrogateUnavailable: files or onnxruntime missing.
    """
    return _load(str(surrogate_dir(root).resolve()))
