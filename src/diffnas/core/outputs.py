"""What a search writes into its run directory (all atomically, see :mod:`diffnas.core.rundir`).

* ``recipe.yaml``: the resolved recipe, every default filled in;
* ``metrics.jsonl``: one JSON line per finished epoch (losses, accuracies, learning rates, α
  entropy, op strengths, the current genotype, its op counts and benchmark scores);
* ``scalars.csv``: the numbers of ``metrics.jsonl`` as a table, one row per epoch and one column
  per scalar (nested keys joined by dots, e.g. ``scores.nb201.cifar10_test``; op strengths are
  left out, they are per edge and op), for spreadsheets and plotting tools (:func:`scalars`);
* ``steps.csv``: with ``diagnostics.every_steps``, the step records (each epoch record's ``steps``
  list in ``metrics.jsonl``, :mod:`diffnas.core.step_records`) as a table, one row per recorded step,
  ``global_step`` first;
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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch
import yaml

from .genotype import Genotype
from .errors import RunError
from .rundir import TMP_SUFFIX, RunDir, atomic_write, io_errors, write_json, write_text
from .step_records import STEPS_CSV, step_records

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Search

CHECKPOINT = "checkpoint.pt"
SCALARS = "scalars.csv"
#: the previous checkpoint a population member keeps beside ``checkpoint.pt`` while its population
#: runs, so that a population killed between two members' writes resumes all of them in step
#: (:func:`bring_into_step`); deleted when the population ends
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"

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


def scalars_csv(records: Iterable[dict], first: str = "epoch") -> str:
    """``scalars.csv`` text: one row per record, columns in order of first appearance (``first``
    first), an empty cell where a record lacks a column."""
    rows = [scalars(r) for r in records]
    columns: dict[str, None] = {first: None}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()

#: what a search writes into its run directory: a new search refuses a directory holding any of them
#: (``--overwrite`` moves them aside, with :data:`RUN_COMPANIONS`)
RUN_OUTPUTS = ("recipe.yaml", "metrics.jsonl", CHECKPOINT, PREVIOUS_CHECKPOINT, "genotype.json", "result.json",
               SCALARS, STEPS_CSV, "cell_*.png", "tensorboard")
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
        #: keep the previous checkpoint as PREVIOUS_CHECKPOINT when a newer one replaces it (a population
        #: member: see bring_into_step); the global step of the checkpoint on disk, once known
        self.keep_previous = False
        self._on_disk: int | None = None

    def open(self) -> None:
        self.dir.prepare().lock()
        resumed = getattr(self.search, "resumed", False)
        try:
            if resumed:
                # the checkpoint is the truth: drop metrics lines written after it (killed mid-epoch-end)
                self.write_metrics()
                self._on_disk = self.search.state.global_step
            else:
                text = yaml.safe_dump(self.search.resolved.to_dict(), sort_keys=False)
                # what the run's loggers write (a custom TensorBoard subdir) is a run output as well
                extra = tuple(o for lg in getattr(self.search, "loggers", ()) for o in lg.outputs())
                self.replaced = self.dir.claim(RUN_OUTPUTS + extra, {"recipe.yaml": text},
                                               getattr(self.search, "overwrite", False), companions=RUN_COMPANIONS)
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
        steps = step_records(self.search.state.history)
        if steps:
            with io_errors(self.dir.file(STEPS_CSV)):
                write_text(self.dir.file(STEPS_CSV), scalars_csv(steps, first="global_step"))

    def checkpoint(self) -> None:
        state = self.search.state_dict()

        def save(f: Any) -> None:
            buf = io.BytesIO()
            torch.save(state, buf)
            f.write(buf.getbuffer())

        path = self.dir.file(CHECKPOINT)
        st = self.search.state
        if self.keep_previous and self._on_disk is not None and self._on_disk != st.global_step:
            self._keep_previous(path)
        with io_errors(path):
            atomic_write(path, save)
        self._on_disk = st.global_step
        self.search.last_checkpoint = {"path": str(path), "epoch": st.epoch, "step": st.step}
        if self.replaced is not None:  # the new run can now be resumed: the old one is no longer needed
            RunDir.drop_replaced(self.replaced)
            self.replaced = None

    def _keep_previous(self, path: Any) -> None:
        """The checkpoint on disk becomes PREVIOUS_CHECKPOINT (a hard link renamed into place: atomic,
        nothing copied; a copy where the file system has no links)."""
        import shutil

        prev = self.dir.file(PREVIOUS_CHECKPOINT)
        tmp = self.dir.file(f".{PREVIOUS_CHECKPOINT}.link{TMP_SUFFIX}")
        with io_errors(prev):
            tmp.unlink(missing_ok=True)
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, prev)

    def drop_previous(self) -> None:
        """Delete PREVIOUS_CHECKPOINT (the population ended: its members need no way back)."""
        with io_errors(self.dir.file(PREVIOUS_CHECKPOINT), "delete"):
            self.dir.file(PREVIOUS_CHECKPOINT).unlink(missing_ok=True)

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


# --------------------------------------------------------------------------- resuming a search's checkpoint


def _plain_problem(value: Any, limit: int = 32) -> str | None:
    """Why ``value`` is not plain JSON-like data (str, number, bool, None, lists, string-keyed
    mappings, at most ``limit`` levels deep), or ``None`` when it is (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list, tuple)):
            if depth > limit:
                return f"nested more than {limit} levels deep"
            if isinstance(v, dict):
                if not all(isinstance(k, str) for k in v):
                    return "a mapping with a key that is not a string"
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)
        elif not (v is None or isinstance(v, (str, int, float, bool))):
            return f"a value of type {type(v).__name__}"
    return None


def checkpoint_problems(ckpt: dict) -> list[tuple[str, str]]:
    """``(key path, what was expected)`` for each entry of a search checkpoint of the wrong shape
    (empty: it has the shape :meth:`~diffnas.core.engine.Search.state_dict` writes). Checked before
    anything is loaded, so that a damaged or edited file is refused with its key path instead of
    failing half-way through loading (or being recorded wrongly)."""
    from .limits import short

    out: list[tuple[str, str]] = []

    def expect(path: str, value: Any, ok: bool, what: str) -> None:
        if not ok:
            out.append((path, f"expected {what}, got {type(value).__name__} {short(value)}"))

    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in ("state", "model", "alphas", "w_optimizer", "a_optimizer", "components", "loaders", "rng"):
        expect(key, ckpt.get(key), isinstance(ckpt.get(key), dict), "a mapping")
    state = ckpt.get("state")
    if isinstance(state, dict):
        for key in ("epoch", "step", "global_step"):
            expect(f"state.{key}", state.get(key), count(state.get(key)), "a count (an integer >= 0)")
        expect("state.finished", state.get("finished"), isinstance(state.get("finished"), bool), "true or false")
        expect("state.stop_reason", state.get("stop_reason"), state.get("stop_reason") is None
               or isinstance(state.get("stop_reason"), str), "a string or null")
        history = state.get("history")
        if not isinstance(history, list):
            expect("state.history", history, False, "a list of epoch records (mappings)")
        else:
            for i, rec in enumerate(history):
                why = _plain_problem(rec) if isinstance(rec, dict) else "not a mapping"
                if why:
                    out.append((f"state.history[{i}]", f"expected an epoch record (a mapping of plain values): {why}"))
                    break
    notes = ckpt.get("pending_notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, dict) and _plain_problem(n) is None for n in notes):
        expect("pending_notes", notes, False, "a list of notes (mappings of plain values)")
    loaders = ckpt.get("loaders")
    if isinstance(loaders, dict):
        expect("loaders.train", loaders.get("train"), isinstance(loaders.get("train"), dict), "a mapping")
        expect("loaders.valid", loaders.get("valid"), loaders.get("valid") is None or isinstance(loaders.get("valid"), dict),
               "a mapping or null")
    components = ckpt.get("components")
    if isinstance(components, dict):
        for k, v in components.items():
            expect(f"components.{short(k)}", v, isinstance(v, dict), "a mapping (the component's state)")
    alphas = ckpt.get("alphas")
    if isinstance(alphas, dict):
        for k, v in alphas.items():
            expect(f"alphas.{short(k)}", v, isinstance(v, torch.Tensor), "a tensor")
    sums = ckpt.get("epoch_sums", {})
    expect("epoch_sums", sums, isinstance(sums, dict) and all(isinstance(v, torch.Tensor) for v in sums.values()),
           "a mapping of tensors")
    for key in ("nonfinite_step",):
        v = ckpt.get(key, -1)
        expect(key, v, isinstance(v, int) and not isinstance(v, bool), "an integer")
    v = ckpt.get("epoch_elapsed", 0.0)
    expect("epoch_elapsed", v, isinstance(v, (int, float)) and not isinstance(v, bool), "a number")
    for key in ("pending_stop", "recipe_sha256"):
        v = ckpt.get(key)
        expect(key, v, v is None or isinstance(v, str), "a string or null")
    rng = ckpt.get("rng")
    if isinstance(rng, dict):
        expect("rng.torch", rng.get("torch"), isinstance(rng.get("torch"), torch.Tensor), "a tensor")
        expect("rng.cuda", rng.get("cuda"), isinstance(rng.get("cuda"), list), "a list")
        expect("rng.python", rng.get("python"), isinstance(rng.get("python"), list)
               and all(isinstance(x, int) and not isinstance(x, bool) for x in rng.get("python")), "a list of integers")
        pos = rng.get("python_pos")  # random.getstate()'s third item: the pending Gaussian, or None
        expect("rng.python_pos", pos, pos is None or (isinstance(pos, (int, float)) and not isinstance(pos, bool)),
               "a number or null")
    return out


def load_search_checkpoint(path: Any, map_location: Any = "cpu") -> dict:
    """:func:`load_checkpoint` for a search's checkpoint, its shape checked (:func:`checkpoint_problems`):
    every loader of a search checkpoint (``--resume``, a population, ``rank``) refuses a damaged
    one with the same message, naming the key path."""
    ckpt = load_checkpoint(path, map_location)
    problems = checkpoint_problems(ckpt)
    if problems:
        lines = "; ".join(f"{where}: {what}" for where, what in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise RunError(f"checkpoint {path} is damaged or not a search's checkpoint: {lines}{more}")
    return ckpt


def recipe_change_note(ckpt: dict, resolved: Any, ckpt_path: Any, recipe_path: Any, force: bool) -> dict | None:
    """Compare the checkpoint's recipe fingerprint with ``resolved`` (the run's recipe now): refuse
    a changed recipe (:class:`RunError`) unless ``force``; with ``force`` return the note the next
    ``metrics.jsonl`` record carries (``None``: unchanged, or a checkpoint without a fingerprint)."""
    from .recipe import recipe_fingerprint

    old, new = ckpt.get("recipe_sha256"), recipe_fingerprint(resolved)
    if old is None or old == new:
        return None
    if not force:
        raise RunError(f"{recipe_path} differs from the recipe {ckpt_path} was made with (recipe "
                       f"fingerprint {str(old)[:12]} in the checkpoint, {new[:12]} now); resuming would mix two "
                       f"settings in one run. Restore the recipe, start a new run, or give --force to resume "
                       f"anyway (recorded in metrics.jsonl)")
    return {"event": "resumed with a changed recipe (--force)", "recipe_sha256_before": str(old), "recipe_sha256_after": new}


def restore_search(search: Any, ckpt: dict, ckpt_path: Any, recipe_path: Any, note: dict | None = None) -> None:
    """Load a (shape-checked) checkpoint into a built search; a checkpoint that does not fit the
    search (another recipe's supernet, a component's state missing) is a :class:`RunError` naming
    both files, never a traceback. ``note`` (from :func:`recipe_change_note`) is recorded."""
    problems = checkpoint_problems(ckpt)
    if problems:
        raise RunError(f"checkpoint {ckpt_path} is damaged or not a search's checkpoint: "
                       + "; ".join(f"{where}: {what}" for where, what in problems[:5]))
    try:
        search.load_state_dict(ckpt)
    except RunError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        first = " ".join(x.strip() for x in str(exc).strip().splitlines()[:3])  # torch's reason is on line 2
        from .limits import clip

        raise RunError(f"checkpoint {ckpt_path} does not fit the run's recipe {recipe_path} "
                       f"({type(exc).__name__}: {clip(first)})") from None
    if note is not None:
        search.pending_notes.append(note)


def bring_into_step(run_dirs: list[Any], ckpts: list[dict]) -> list[dict]:
    """The checkpoints a population resumes from, all at one step.

    A population writes its members' checkpoints one after another, so a kill between two writes
    leaves some members one checkpoint ahead. Each member keeps its previous checkpoint
    (:data:`PREVIOUS_CHECKPOINT`) until the population ends; a member ahead of the others' (the
    earliest unfinished member's) step goes back to it, which is then made its ``checkpoint.pt``
    again (a member that stopped earlier stays where it stopped). Refused (:class:`RunError`) when a
    member has no checkpoint at that step."""
    def pos(c: dict) -> int:
        return c["state"]["global_step"]

    going = [pos(c) for c in ckpts if not c["state"]["finished"]]
    if not going:
        return ckpts
    target = min(going)
    out, back = [], []
    for d, c in zip(run_dirs, ckpts):
        if pos(c) <= target:
            out.append(c)
            continue
        prev_path = Path(d) / PREVIOUS_CHECKPOINT
        prev = load_search_checkpoint(prev_path) if (prev_path.exists() or prev_path.is_symlink()) else None
        if prev is None or pos(prev) != target:
            have = "none" if prev is None else f"global step {pos(prev)}"
            raise RunError(f"the members are not in step: {Path(d) / CHECKPOINT} is at global step {pos(c)}, another "
                           f"member at {target}, and {prev_path} (the member's previous checkpoint) is at {have}; "
                           f"resume the members one by one with diffnas search --resume, or run the population anew")
        out.append(prev)
        back.append((Path(d), prev_path))
    for d, prev_path in back:  # on disk too: each checkpoint.pt is the state its member resumes from
        with io_errors(d / CHECKPOINT):
            os.replace(prev_path, d / CHECKPOINT)
    return out
