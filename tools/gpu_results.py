"""The phases' checks and the one results file of tools/gpu_session.sh.

Each phase of the GPU command ends with one of these subcommands: it reads what the phase wrote,
checks it (a check that fails exits 1 and says why: the script then reports the phase as failed and
exits non-zero), and writes the phase's figures as ``WORK/phases/<phase>.json``. ``merge`` gathers
them, with the device's name and settings, into ``$OUT/results.json`` (after every phase, so a killed
call still leaves a valid file). ``tools/gpu_tables.py`` turns that file into the README's tables.

    python tools/gpu_results.py device PHASE_JSON [--dry-run]
    python tools/gpu_results.py bench BENCH_JSON PHASE_JSON --impls a,b --configs c,d [--dry-run]
    python tools/gpu_results.py population POP_JSON PHASE_JSON --sizes 1,4 [--dry-run]
    python tools/gpu_results.py slice-study STUDY OUT_YAML --steps S [--seeds 0,1] [--set k=v ...]
    python tools/gpu_results.py collapse STUDY_DIR SLICE_YAML LOG PHASE_JSON --steps S --wall W
    python tools/gpu_results.py search RUN_DIR PHASE_JSON --before STEP --wall W [--partial]
    python tools/gpu_results.py steps RUN_DIR...      # checkpointed global steps
    python tools/gpu_results.py merge OUT_JSON PHASES_DIR --dry-run 0|1 --status-file F
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "diffnas-gpu-session/1"
#: the NAS-Bench-201 search protocol the projections scale to: 50 epochs over the 25,000-image train half
FULL_EPOCHS, FULL_TRAIN_HALF = 50, 25000


class CheckFailed(Exception):
    """A phase's output is missing or wrong: the phase failed."""


def _write(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    os.replace(tmp, path)


def _read_json(path: str | Path, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckFailed(f"{what}: {path} was not written") from None
    except (OSError, ValueError) as exc:
        raise CheckFailed(f"{what}: cannot read {path}: {exc}") from None


# ----------------------------------------------------------------------------- device


def device_info(dry_run: bool) -> dict[str, Any]:
    """The device's name and settings (GPU via torch and nvidia-smi; the CPU on a dry run)."""
    import torch

    import diffnas  # noqa: F401 - fails here, in the setup phase, when a carried wheel (cattrs ...) is missing

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "platform": platform.platform(), "dry_run": dry_run}
    if torch.cuda.is_available() and not dry_run:
        p = torch.cuda.get_device_properties(0)
        info.update(kind="cuda", name=torch.cuda.get_device_name(0), memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), count=torch.cuda.device_count())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info.update(kind="cpu", name=name, cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                    threads=torch.get_num_threads())
        if not dry_run:
            raise CheckFailed(f"no GPU visible (torch {torch.__version__}, cuda {torch.version.cuda}); "
                              f"this command measures a GPU: use DRY_RUN=1 on a CPU")
    try:
        info["commit"] = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%H %s"],
                                        capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


# ----------------------------------------------------------------------------- bench


def check_bench(path: str, impls: list[str], configs: list[str], dry_run: bool) -> dict[str, Any]:
    """Every configuration has a figure for every implementation asked; on a dry run only the skips
    a CPU must make (CUDA graphs; the reference where xautodl is not installed) are allowed."""
    b = _read_json(path, "bench")
    got = {(r["config"], r["impl"]) for r in b.get("results", [])}
    skipped = {(s["config"], s["impl"]): s["reason"] for s in b.get("skipped", [])}
    missing = []
    for c in configs:
        for i in impls:
            if (c, i) in got:
                continue
            reason = skipped.get((c, i), "no figure and no reason")
            allowed = dry_run and ("CUDA graphs need a CUDA device" in reason or i.startswith("reference"))
            if not allowed:
                missing.append(f"{c}/{i}: {reason}")
    if missing:
        raise CheckFailed("bench: " + "; ".join(missing))
    return {"environment": b["environment"], "settings": b["settings"], "results": b["results"],
            "ratios": b["ratios"], "skipped": b["skipped"]}


# ----------------------------------------------------------------------------- population


def check_population(path: str, sizes: list[int]) -> dict[str, Any]:
    """A row for the single run(s) and for every population size asked, each with positive steps/s."""
    p = _read_json(path, "population")
    rows = p.get("rows", {})
    want = ["single"] + [f"K={k}" for k in sizes]
    bad = [n for n in want if n not in rows or not rows[n].get("steps_per_s_median", 0) > 0]
    if bad:
        raise CheckFailed(f"population: no figure for {', '.join(bad)} (rows: {', '.join(rows) or 'none'})")
    return p


# ----------------------------------------------------------------------------- collapse-study slice


def slice_study(study: str, out: str, steps: int, seeds: list[int] | None, sets: list[str], max_size: int) -> None:
    """Write the study as a fixed-step slice: one epoch of ``steps`` steps per run, every run
    (recipe paths made absolute, the study's own ``set`` kept, then ``sets``), grouped into
    populations wherever the population path accepts the runs (``population: enabled``)."""
    import yaml

    src = Path(study).resolve()
    s = yaml.safe_load(src.read_text())
    for r in s.get("runs", []):
        if isinstance(r.get("recipe"), str):
            r["recipe"] = str((src.parent / r["recipe"]).resolve())
    base = dict(s.get("set") or {})
    s["full_epochs"] = base.get("trainer.epochs", FULL_EPOCHS)  # kept for the projection (read back below)
    base.update({"trainer.epochs": 1, "trainer.steps_per_epoch": steps, "output.progress": False,
                 "output.draw_cells": False})
    for kv in sets:
        k, v = kv.split("=", 1)
        base[k] = yaml.safe_load(v)
    s["set"] = base
    if seeds is not None:
        s.setdefault("axes", {})["trainer.seed"] = seeds
    s["population"] = {"enabled": True, "max_size": max_size}
    s["name"] = f"{s.get('name', src.stem)}_slice"
    s.pop("out", None)
    full_epochs = s.pop("full_epochs")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(f"# {src.name} as a fixed-step slice (tools/gpu_results.py slice-study); "
                         f"full_epochs: {full_epochs}\n" + yaml.safe_dump(s, sort_keys=False))


def _epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            d = json.loads(line)
            if "epoch" in d and "time_s" in d:
                out.append(d)
    except (OSError, ValueError):
        pass
    return out


def collapse(study_dir: str, slice_yaml: str, log: str, steps: int, wall: float) -> dict[str, Any]:
    """Per run of the slice: fused into a population or not, its epoch time for ``steps`` steps;
    the projection to the full study (50 epochs over the 25,000-image half, each run's batch),
    counting a population's shared epoch once."""
    import yaml

    text = Path(slice_yaml).read_text()
    m = re.search(r"full_epochs: (\d+)", text.splitlines()[0])
    full_epochs = int(m.group(1)) if m else FULL_EPOCHS
    runs_dir = Path(study_dir) / "runs"
    log_text = Path(log).read_text() if Path(log).exists() else ""
    groups = [g.split(", ") for g in re.findall(r"population of \d+ run\(s\): (.+)", log_text)]
    refused = re.findall(r"population of (.+?) cannot be fused, running them one by one: (.+)", log_text)
    refused_ids = set()
    for ids, _ in refused:
        refused_ids |= {x.strip(" []'\"") for x in re.split(r"[, ]+", ids) if x.strip(" []'\"")}
    fused_groups = [g for g in groups if not (set(g) & refused_ids)]
    runs, missing = [], []
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        recs = _epoch_records(d)
        if not recs or not (d / "result.json").exists():
            missing.append(d.name)
            continue
        rec = yaml.safe_load((d / "recipe.yaml").read_text())
        batch = rec["trainer"]["batch_size"]
        t = recs[0]["time_s"]
        group = next((i for i, g in enumerate(fused_groups) if d.name in g), None)
        runs.append({"run": d.name, "batch": batch, "steps": steps, "epoch_time_s": t, "population": group,
                     "fused_cells": rec["trainer"].get("fused_cells"), "cuda_graphs": rec["trainer"].get("cuda_graphs"),
                     "projected_run_s": t / steps * (FULL_TRAIN_HALF // batch) * full_epochs})
    if missing or not runs:
        raise CheckFailed(f"collapse: {len(missing)} run(s) unfinished or without records: {', '.join(missing[:8]) or 'no runs at all'}")
    serial = 0.0
    counted: set[int] = set()
    for r in runs:
        if r["population"] is None:
            serial += r["projected_run_s"]
        elif r["population"] not in counted:  # a population's epoch is shared: count it once
            counted.add(r["population"])
            serial += r["projected_run_s"]
    return {"runs": runs, "populations": [g for g in fused_groups], "refused": [{"runs": i, "reason": why} for i, why in refused],
            "steps_per_run": steps, "slice_wall_s": wall, "full_epochs": full_epochs,
            "projected_full_study_s": serial,
            "projection": (f"sum over work items (a population once) of epoch time / {steps} steps x "
                           f"{FULL_TRAIN_HALF} // batch steps x {full_epochs} epochs; run one after another on one device")}


# ----------------------------------------------------------------------------- search slice


def search(run_dir: str, before: int, wall: float, partial: bool) -> dict[str, Any]:
    """The search's progress this call (from its checkpoint or its result), its steps/s, the
    projected time of the whole search; fails if it made no progress (and did not finish)."""
    import torch

    d = Path(run_dir)
    res = d / "result.json"
    recs = _epoch_records(d)
    out: dict[str, Any] = {"run_dir": str(d), "global_step_before": before, "phase_wall_s": wall}
    ck = d / "checkpoint.pt"
    state = None
    if ck.exists():
        state = torch.load(ck, map_location="cpu", weights_only=True)["state"]
    import yaml

    rec = yaml.safe_load((d / "recipe.yaml").read_text())
    epochs = rec["trainer"]["epochs"]
    out["recipe"] = {"space": rec["search_space"], "epochs": epochs, "batch_size": rec["trainer"]["batch_size"],
                     "steps_per_epoch": rec["trainer"].get("steps_per_epoch"),
                     "fused_cells": rec["trainer"].get("fused_cells"), "cuda_graphs": rec["trainer"].get("cuda_graphs"),
                     "data": rec["data"]}
    out["epochs_done"] = len(recs)
    times = [r["time_s"] for r in recs]
    out["epoch_time_s_median"] = statistics.median(times) if times else None
    out["projected_search_s"] = out["epoch_time_s_median"] * epochs if times else None
    if res.exists():
        r = json.loads(res.read_text())
        out.update(finished=True, genotype=r.get("genotype"), scores=r.get("scores"),
                   search_time_s=r.get("search_time_s"), epochs_run=r.get("epochs_run"))
        after = (state or {}).get("global_step")
        out["global_step_after"] = after
    else:
        out["finished"] = False
        after = (state or {}).get("global_step", 0)
        out["global_step_after"] = after
        if after <= before:
            raise CheckFailed(f"search: no progress this call (global step {before} -> {after}); no checkpoint in {d}?")
    if out.get("global_step_after") is not None and wall > 0:
        out["steps_per_s_call"] = (out["global_step_after"] - before) / wall  # includes start-up and epoch ends
    out["partial"] = partial
    return out


def global_steps(run_dirs: list[str]) -> list[int]:
    """Each run directory's checkpointed global step (0 without a checkpoint): one torch import for all."""
    import torch

    out = []
    for d in run_dirs:
        try:
            out.append(int(torch.load(Path(d) / "checkpoint.pt", map_location="cpu", weights_only=True)["state"]["global_step"]))
        except (OSError, KeyError, RuntimeError, ValueError):
            out.append(0)
    return out


# ----------------------------------------------------------------------------- merge


def merge(out: str, phases_dir: str, dry_run: bool, status_file: str) -> None:
    statuses = {}
    for line in Path(status_file).read_text().splitlines() if Path(status_file).exists() else []:
        name, status, rc, wall, *detail = line.split("\t")
        statuses[name] = {"status": status, "rc": int(rc), "wall_s": int(wall), "detail": detail[0] if detail else ""}
    result: dict[str, Any] = {"schema": SCHEMA, "dry_run": dry_run,
                              "label": "CPU dry run (tiny sizes; not a GPU figure)" if dry_run else "GPU",
                              "device": None, "phases": {}}
    for name, st in statuses.items():
        f = Path(phases_dir) / f"{name}.json"
        entry = dict(st)
        if f.exists():
            entry["result"] = json.loads(f.read_text())
        result["phases"][name] = entry
    dev = result["phases"].get("setup", {}).get("result")
    result["device"] = dev
    result["failed"] = [n for n, e in result["phases"].items() if e["status"] not in ("ok", "partial")]
    _write(out, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("device"); s.add_argument("phase_json"); s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("bench"); s.add_argument("bench_json"); s.add_argument("phase_json")
    s.add_argument("--impls", required=True); s.add_argument("--configs", required=True); s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("population"); s.add_argument("pop_json"); s.add_argument("phase_json"); s.add_argument("--sizes", required=True)
    s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("slice-study"); s.add_argument("study"); s.add_argument("out"); s.add_argument("--steps", type=int, required=True)
    s.add_argument("--seeds"); s.add_argument("--set", action="append", default=[]); s.add_argument("--max-size", type=int, default=21)
    s = sub.add_parser("collapse"); s.add_argument("study_dir"); s.add_argument("slice_yaml"); s.add_argument("log")
    s.add_argument("phase_json"); s.add_argument("--steps", type=int, required=True); s.add_argument("--wall", type=float, required=True)
    s = sub.add_parser("search"); s.add_argument("run_dir"); s.add_argument("phase_json")
    s.add_argument("--before", type=int, default=0); s.add_argument("--wall", type=float, required=True)
    s.add_argument("--partial", action="store_true")
    s = sub.add_parser("steps"); s.add_argument("run_dirs", nargs="+")
    s = sub.add_parser("merge"); s.add_argument("out"); s.add_argument("phases_dir")
    s.add_argument("--dry-run", type=int, default=0); s.add_argument("--status-file", required=True)
    a = p.parse_args(argv)
    try:
        if a.cmd == "device":
            info = device_info(a.dry_run)
            _write(a.phase_json, info)
            print(f"device: {info['kind']} {info['name']}, torch {info['torch']}, python {info['python']}")
        elif a.cmd == "bench":
            _write(a.phase_json, check_bench(a.bench_json, a.impls.split(","), a.configs.split(","), a.dry_run))
        elif a.cmd == "population":
            _write(a.phase_json, check_population(a.pop_json, [int(k) for k in a.sizes.split(",")]))
        elif a.cmd == "slice-study":
            slice_study(a.study, a.out, a.steps, [int(x) for x in a.seeds.split(",")] if a.seeds else None, a.set, a.max_size)
        elif a.cmd == "collapse":
            r = collapse(a.study_dir, a.slice_yaml, a.log, a.steps, a.wall)
            _write(a.phase_json, r)
            print(f"collapse slice: {len(r['runs'])} runs, {len(r['populations'])} population(s), "
                  f"{len(r['refused'])} refused group(s); projected full study {r['projected_full_study_s'] / 3600:.2f} h "
                  f"(one after another on this device)")
        elif a.cmd == "search":
            r = search(a.run_dir, a.before, a.wall, a.partial)
            _write(a.phase_json, r)
            proj = "-" if r["projected_search_s"] is None else f"{r['projected_search_s'] / 60:.1f} min"
            print(f"search: global step {r['global_step_before']} -> {r['global_step_after']}, {r['epochs_done']} epoch(s) "
                  f"done, finished {r['finished']}, projected whole search {proj}")
        elif a.cmd == "steps":
            print(" ".join(str(n) for n in global_steps(a.run_dirs)))
        elif a.cmd == "merge":
            merge(a.out, a.phases_dir, bool(a.dry_run), a.status_file)
    except CheckFailed as exc:
        print(f"CHECK FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
