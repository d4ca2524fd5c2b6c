"""Populations in studies: runs that share a composition run as one population-fused search.

With ``population: {enabled: true, max_size: 16}`` in a study file, ``diffnas study`` groups the
unfinished runs whose recipes differ only in seeds and numeric hyperparameters (learning rates,
momentum, weight decay, betas, gradient-clip value, component parameters other than the search space's
and the update rule's ``order``) into populations of at most ``max_size`` runs; each population is one
work item (:class:`PopulationItem`) that every executor schedules like a one-run item: in process
through :func:`diffnas.api.search_population` (or :func:`diffnas.api.resume_population` when all its
runs hold a checkpoint), or as one ``diffnas population ... --fallback`` command line. Each run still
writes its own run directory, identical to its separate run's. A group that cannot be fused (GDAS
sampling, a supernet-changing regulariser, ...) is logged with the reason and its runs run one by one.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs

from ..core.errors import DiffnasError, RecipeError
from .executors import Outcome, WorkItem, recipe_path, write_error
from .schema import RunSpec

#: trainer keys that may differ between members (per-member values in the fused step)
_MEMBER_TRAINER_KEYS = ("seed",)
_MEMBER_OPT_KEYS = ("lr", "lr_min", "weight_decay", "betas", "schedule")


def composition_key(recipe: dict[str, Any]) -> str:
    """What members of one population share: the recipe without seeds, run directories and
    numeric hyperparameters (component parameters other than the search space's and the update
    rule's ``order``; optimiser values; the clip value but not whether there is one)."""
    r = copy.deepcopy(recipe)
    r.pop("output", None)
    t = r.get("trainer", {})
    for k in _MEMBER_TRAINER_KEYS:
        t.pop(k, None)
    if "grad_clip" in t:
        t["grad_clip"] = t["grad_clip"] is not None
    for opt in ("weights_optimizer", "arch_optimizer"):
        o = t.get(opt)
        if isinstance(o, dict):
            for k in _MEMBER_OPT_KEYS:
                o.pop(k, None)
            if "momentum" in o:
                o["momentum"] = bool(o["momentum"])

    def names_only(block: Any, keep: tuple[str, ...] = ()) -> Any:
        if isinstance(block, dict):
            return {"name": block.get("name"), "params": {k: v for k, v in (block.get("params") or {}).items() if k in keep}}
        if isinstance(block, list):
            return [names_only(b) for b in block]
        return block

    for slot in ("relaxation", "discretiser", "regularisers", "schedules"):
        if slot in r:
            r[slot] = names_only(r[slot])
    if "update_rule" in r:
        r["update_rule"] = names_only(r["update_rule"], keep=("order", "step_order"))
    return json.dumps(r, sort_keys=True, default=str)


def group_work_items(specs: Sequence[RunSpec], max_size: int) -> list[list[RunSpec]]:
    """The unfinished specs grouped: up to ``max_size`` specs of one composition key and one status
    (pending, or partial: a population resumes together), a group larger than ``max_size`` split into
    as few groups of even sizes as it allows; in study order."""
    groups: dict[tuple[str, str], list[RunSpec]] = {}
    for s in specs:
        if s.status == "done":
            continue
        groups.setdefault((composition_key(s.recipe), s.status), []).append(s)
    items: list[list[RunSpec]] = []
    for members in groups.values():
        n = -(-len(members) // max_size)  # as few populations as max_size allows, of even sizes
        bounds = [round(i * len(members) / n) for i in range(n + 1)]
        items += [members[a:b] for a, b in zip(bounds, bounds[1:])]
    order = {s.id: i for i, s in enumerate(specs)}
    return sorted(items, key=lambda it: order[it[0].id])


def population_work_items(specs: Sequence[RunSpec], config: Any) -> list[WorkItem]:
    """The study's work items with populations (``config``: the study's ``population`` block): a
    :class:`PopulationItem` per group of two or more runs (:func:`group_work_items`), calibrated
    first under ``enabled: auto``; a plain one-run :class:`WorkItem` otherwise."""
    rounds = config.calibration_rounds if config.enabled == "auto" else None
    return [PopulationItem(f"population-{g[0].id}", tuple(g), calibration_rounds=rounds) if len(g) > 1
            else WorkItem(g[0].id, tuple(g)) for g in group_work_items(specs, config.max_size)]


#: where a calibrated population item records its decision and figures (``OUT/populations/<item id>.json``)
DECISIONS_DIR = "populations"


def decision_path(out: Path, item_id: str) -> Path:
    return Path(out) / DECISIONS_DIR / f"{item_id}.json"


def calibrate_and_record(recipes: Sequence[Any], path: Path, rounds: int, ids: Sequence[str],
                         catalogue: Any = None, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    """Time the population of ``recipes`` against one plain run (:func:`diffnas.core.population.calibrate_population`)
    and write the decision and figures to ``path`` (atomically); return them. A population that
    cannot be formed raises :class:`RecipeError` before anything is written."""
    from .. import api
    from ..core.rundir import write_text
    from ..core.population import calibrate_population

    cat = catalogue or api.catalogue()
    resolved = [api.prepare(r, overrides, cat)[0] for r in recipes]
    fig = calibrate_population(resolved, cat.pm, cat, rounds=rounds)
    fig = {"runs": list(ids), "decision": "population" if fig["fused"] else "separate", **fig}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(fig, indent=2) + "\n")
    return fig


def decision_line(fig: dict[str, Any]) -> str:
    """One line of a calibration's figures, for logs and the study's results."""
    return (f"{fig['decision']}: one population step of {fig['K']} runs {fig['population_step_s']:.3f} s against "
            f"{fig['K']} x {fig['separate_step_s']:.3f} s = {fig['separate_estimate_s']:.3f} s run one by one "
            f"(ratio {fig['ratio']:.2f}; median of {fig['rounds']} interleaved rounds; calibration "
            f"{fig['calibration_s']:.1f} s)")


@attrs.frozen
class PopulationItem(WorkItem):
    """Several runs of one composition as ONE population-fused search, in one process. Any executor
    schedules it like a one-run item. When the runs cannot be fused (the population refuses them
    before anything is written) they run one by one, as plain items do, the reason logged."""

    #: ``None``: always fused; a number: calibrated first with that many rounds (``population: auto``)
    calibration_rounds: int | None = None

    def commands(self, out: Path, program: Sequence[str] = ("diffnas",)) -> list[list[str]]:
        """One ``diffnas population ... --fallback`` line (all runs pending, or all resumable; with
        ``--auto FILE`` when calibrated); otherwise the runs' own commands."""
        todo = [s for s in self.specs if s.status != "done"]
        auto = ([] if self.calibration_rounds is None else
                ["--auto", str(decision_path(out, self.key)), "--calibration-rounds", str(self.calibration_rounds)])
        if len(todo) > 1 and all(s.status == "pending" for s in todo):
            return [[*program, "population", *[str(recipe_path(s, out)) for s in todo],
                     "--run-dirs", *[str(s.out_dir) for s in todo], "--no-progress", "--fallback", *auto]]
        if len(todo) > 1 and all(s.status == "partial" for s in todo):
            return [[*program, "population", "--resume", *[str(s.out_dir) for s in todo], "--no-progress", "--fallback",
                     *auto]]
        return super().commands(out, program)

    def run(self, out: Path, catalogue: Any = None, progress: bool | None = None, log: Callable[[str], None] = print,
            on_epoch: Callable[[str, int, int], None] | None = None) -> list[Outcome]:
        from .. import api

        todo = [s for s in self.specs if s.status != "done"]
        statuses = {s.status for s in todo}
        if len(todo) < 2 or len(statuses) > 1:
            return super().run(out, catalogue, progress, log, on_epoch)
        ids = ", ".join(s.id for s in todo)
        t0 = time.perf_counter()
        resumed = statuses == {"partial"}

        def one_by_one(exc: RecipeError) -> list[Outcome]:  # refused before anything was written
            log(f"population of {ids} cannot be fused, running them one by one: {str(exc).splitlines()[-1].strip()}")
            return WorkItem.run(self, out, catalogue, progress, log, on_epoch)

        if self.calibration_rounds is not None:
            try:
                fig = calibrate_and_record([s.recipe for s in todo], decision_path(out, self.key), self.calibration_rounds,
                                           [s.id for s in todo], catalogue)
            except RecipeError as exc:
                return one_by_one(exc)
            log(f"population of {ids}: {decision_line(fig)}")
            if fig["decision"] == "separate":
                return super().run(out, catalogue, progress, log, on_epoch)
        log(f"population of {len(todo)} run(s): {ids}")
        try:
            if resumed:
                api.resume_population([s.out_dir for s in todo], cat=catalogue, progress=progress)
            else:
                api.search_population([s.recipe for s in todo], [s.out_dir for s in todo], cat=catalogue,
                                      progress=progress)
        except RecipeError as exc:
            return one_by_one(exc)
        except DiffnasError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log(f"population {ids}: FAILED: {msg}")
            for s in todo:
                write_error(out, s, str(exc))
            return [Outcome(s.id, "failed", msg, time.perf_counter() - t0, resumed) for s in todo]
        dt = time.perf_counter() - t0
        done = [Outcome(s.id, "skipped", "already finished") for s in self.specs if s not in todo]
        for s in todo:
            if on_epoch is not None:
                n = len((s.out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
                on_epoch(s.id, n, n)
        return done + [Outcome(s.id, "done", "in a population" + (", resumed" if resumed else ""), dt, resumed)
                       for s in todo]
