"""What a search writes into its run directory (all atomically, see :mod:`diffnas.core.rundir`).

* ``recipe.yaml``: the resolved recipe, every default filled in;
* ``metrics.jsonl``: one JSON line per finished epoch (losses, accuracies, learning rates, α
  entropy, op strengths, the current genotype, its op counts and benchmark scores);
* ``scalars.csv``: the numbers of ``metrics.jsonl`` as a table, one row per epoch and one column
  per scalar (nested keys joined by dots, e.g. ``scores.nb201.cifar10_test``; op strengths are
  left out, they are per edge and op), for spreadsheets and plotting tools (:func:`scalars`);
* ``checkpoint.pt``: everything needed to resume exactly (loads with ``weights_only=True``);
* ``provenance.json``: which plugin, class, distribution and version supplied each component;
* ``genotype.json``, ``result.json`` and ``cell_<type>.png`` at the end.

At each epoch end the checkpoint is written first and ``metrics.jsonl`` second, so every line of
``metrics.jsonl`` is backed by the checkpoint's history; a resumed search rewrites ``metrics.jsonl``
from that history (a kill between the two writes leaves them consistent again). A resumed run
reproduces every field of an uninterrupted run bit for bit except the wall-clock fields
:data:`TIMING_KEYS`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import TYPE_CHECKING, Any, Iterable

import torch
import yaml

from .genotype import Genotype
from .errors import RunError
from .rundir import RunDir, atomic_write, io_errors, write_json, write_text

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Search

CHECKPOINT = "checkpoint.pt"
SCALARS = "scalars.csv"

#: record keys that are not scalars: op strengths per edge and op, and the raw values of extra
#: architecture parameters (both in ``metrics.jsonl``; loggers draw them as images)
NON_SCALAR_KEYS: frozenset[str] = frozenset({"alphas", "extra_alphas"})


def scalars(record: dict, sep: str = ".") -> dict[str, float]:
    """The numbers of an epoch record, flattened: ``{"train_loss": ..., "entropy.normal": ...,
    "scores.nb201.cifar10_test": ...}`` (booleans, strings and op strengths are left out)."""
    out: dict[str, float] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix] = v

    for k, v in record.items():
        if k not in NON_SCALAR_KEYS:
            walk(k, v)
    return out


def scalars_csv(records: Iterable[dict]) -> str:
    """``scalars.csv`` text: one row per record, columns in order of first appearance (``epoch``
    first), an empty cell where a record lacks a column."""
    rows = [scalars(r) for r in records]
    columns: dict[str, None] = {"epoch": None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()

#: what a search writes into its run directory: a new search refuses a directory holding any of them
#: (``--overwrite`` moves them aside, with :data:`RUN_COMPANIONS`)
RUN_OUTPUTS = ("recipe.yaml", "metrics.jsonl", CHECKPOINT, "genotype.json", "result.json", SCALARS, "cell_*.png",
               "tensorboard")
#: written at the start with the recipe; they say nothing about results, so they alone do not refuse
RUN_COMPANIONS = ("provenance.json",)

#: The only fields of ``metrics.jsonl`` records (``time_s``) and of ``result.json``
#: (``search_time_s``, ``wall_time_s``) that measure wall-clock time and so differ between an
#: uninterrupted run and a killed-and-resumed one; everything else is identical. A plugin that
#: records a timing must add its key here.
TIMING_KEYS: frozenset[str] = frozenset({"time_s", "search_time_s", "wall_time_s"})


class RunWriter:
    """Writes one search's outputs; holds the run directory's lock while the search runs."""

    def __init__(self, search: "Search"):
        self.search = search
        self.dir = RunDir(search.out_dir)
        self.replaced: Any = None  # the earlier run moved aside by --overwrite, until our first checkpoint

    def open(self) -> None:
        self.dir.prepare().lock()
        resumed = getattr(self.search, "resumed", False)
        try:
            if resumed:
                # the checkpoint is the truth: drop metrics lines written after it (killed mid-epoch-end)
                self.write_metrics()
            else:
                text = yaml.safe_dump(self.search.resolved.to_dict(), sort_keys=False)
                self.replaced = self.dir.claim(RUN_OUTPUTS, {"recipe.yaml": text}, getattr(self.search, "overwrite", False),
                                               companions=RUN_COMPANIONS)
                with io_errors(self.dir.file("recipe.yaml")):
                    write_text(self.dir.file("recipe.yaml"), text)
            provenance = self.dir.file("provenance.json")
            if not resumed or not provenance.exists():  # kept from the first start: what the run began with
                with io_errors(provenance):
                    write_json(provenance, self.search.provenance())
        except BaseException:
            self.dir.unlock()
            raise

    def close(self) -> None:
        self.dir.unlock()

    def write_metrics(self) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.search.state.history)
        with io_errors(self.dir.file("metrics.jsonl")):
            write_text(self.dir.file("metrics.jsonl"), lines)
        with io_errors(self.dir.file(SCALARS)):
            write_text(self.dir.file(SCALARS), scalars_csv(self.search.state.history))

    def checkpoint(self) -> None:
        state = self.search.state_dict()

        def save(f: Any) -> None:
            buf = io.BytesIO()
            torch.save(state, buf)
            f.write(buf.getbuffer())

        path = self.dir.file(CHECKPOINT)
        with io_errors(path):
            atomic_write(path, save)
        st = self.search.state
        self.search.last_checkpoint = {"path": str(path), "epoch": st.epoch, "step": st.step}
        if self.replaced is not None:  # the new run can now be resumed: the old one is no longer needed
            RunDir.drop_replaced(self.replaced)
            self.replaced = None

    def epoch_done(self, record: dict) -> None:
        self.checkpoint()  # first: metrics.jsonl never holds a line the checkpoint lacks
        self.write_metrics()

    def finish(self, genotype: Genotype, summary: dict) -> None:
        with io_errors(self.dir.file("genotype.json")):
            write_json(self.dir.file("genotype.json"), genotype.to_dict())
        self.checkpoint()
        if self.search.recipe.output.draw_cells:
            from .draw import draw_genotype

            with io_errors(self.dir.path, "draw the cells into"):
                summary["pictures"] = draw_genotype(genotype, self.dir.path)
        with io_errors(self.dir.file("result.json")):
            write_json(self.dir.file("result.json"), summary)


def load_checkpoint(path: Any, map_location: Any = "cpu") -> dict:
    """Load a checkpoint safely: ``torch.load(weights_only=True)`` builds only tensors and plain
    data, never an arbitrary object, so no code from the file runs. Anything else (a pickled object,
    a truncated or foreign file) raises :class:`RunError` naming the file."""
    import pickle

    from . import limits

    try:
        # a regular file only: a FIFO or device in its place is refused at once instead of blocking
        fd = limits.open_regular(path, limits.MAX_CHECKPOINT_BYTES, "checkpoint")
        with os.fdopen(fd, "rb") as f:
            ckpt = torch.load(f, map_location=map_location, weights_only=True)
    except limits.InputError as exc:
        raise RunError(str(exc)) from None
    except pickle.UnpicklingError as exc:
        # torch's message: a generic paragraph (with advice we must not give), the reason, a doc link
        parts = [x.strip() for x in str(exc).split("\n\n") if x.strip()]
        reason = next((x for x in parts[1:] if not x.startswith(("Check the documentation", "Please file"))), "")
        reason = reason or (parts[-1] if parts else type(exc).__name__)
        if "GLOBAL" in reason:
            raise RunError(f"refusing to load checkpoint {path}: it holds something other than tensors and plain "
                           f"data ({reason}); checkpoints are loaded with weights_only=True, so no code from a file "
                           f"is run") from None
        raise RunError(f"checkpoint {path} is corrupt or not a diffnas checkpoint ({reason})") from None
    except OSError as exc:
        raise RunError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # truncated, not a torch file, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RunError(f"checkpoint {path} is corrupt or not a diffnas checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or "format" not in ckpt:
        raise RunError(f"{path} is not a diffnas checkpoint (no 'format' entry)")
    return ckpt
