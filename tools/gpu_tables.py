"""The README's speed tables, generated from result files: no figure is typed by hand.

Each table sits between two marker comments in README.md and benchmarks/README.md::

    <!-- tables:begin NAME -->
    ... (generated: do not edit) ...
    <!-- tables:end NAME -->

GPU tables (``gpu-*``) come from the ONE results file of ``tools/gpu_session.sh`` (``$OUT/results.json``);
CPU tables (``cpu-*``) from the benchmarks' committed result files under ``benchmarks/results/``
(``search_speed.py --out``, ``population_speed.py --json``). A table whose file is absent says what to
run, on an idle machine, to make it.

    python tools/gpu_tables.py --gpu results.json --write        # the GPU tables from a GPU session
    python tools/gpu_tables.py --write                           # the CPU tables from benchmarks/results/
    python tools/gpu_tables.py --gpu results.json                # print, write nothing
    python tools/gpu_tables.py --gpu dry.json --write --files /tmp/README.md  # a dry run's, elsewhere

A dry run's results (``"dry_run": true``, CPU figures at tiny sizes) are labelled "CPU dry run, not
GPU figures" in every table, and are never written into this repository's own READMEs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FILES = (ROOT / "README.md", ROOT / "benchmarks" / "README.md")
RESULTS = ROOT / "benchmarks" / "results"
#: the CPU result files, the command that makes each (run with nothing else on the machine)
CPU_SOURCES = {
    "cpu-nb201-speed": ("search_speed_nb201_cpu.json",
                        "python benchmarks/search_speed.py --device cpu --configs nb201-darts --impls "
                        "reference,reference-lean,diffnas,diffnas-fused --rounds 7 --steps 2 --warmup 1 --threads 1 "
                        "--out benchmarks/results/search_speed_nb201_cpu.json"),
    "cpu-darts-speed": ("search_speed_darts_cpu.json",
                        "python benchmarks/search_speed.py --device cpu --configs darts-darts --impls "
                        "reference,reference-lean,diffnas,diffnas-fused --rounds 5 --steps 1 --warmup 1 --threads 1 "
                        "--out benchmarks/results/search_speed_darts_cpu.json"),
    "cpu-population": ("population_speed_cpu.json",
                       "python benchmarks/population_speed.py --sizes 1,2,4,8,16,21 --fused --rounds 7 --steps 2 "
                       "--threads 1 --json benchmarks/results/population_speed_cpu.json"),
}
BEGIN = "<!-- tables:begin {} -->"
END = "<!-- tables:end {} -->"


def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, float)):
        return f"{x:,.{nd}f}"
    return str(x)


def _load(env: dict[str, Any] | None) -> str:
    la = (env or {}).get("loadavg")
    if not la:
        return "load average not recorded"
    threads = (env or {}).get("threads") or 1
    note = "" if la[0] <= threads + 0.5 else " — **not an idle machine: to be re-measured on an idle machine**"
    return f"load average at the start {la[0]:.2f} / {la[1]:.2f} / {la[2]:.2f}{note}"


# ----------------------------------------------------------------------------- speed (search_speed.py JSON)


def speed_table(b: dict[str, Any], label: str) -> list[str]:
    env, st = b["environment"], b["settings"]
    dev = env.get("gpu") or env.get("cpu") or env.get("device")
    lines = [f"*{label}*: {dev}, torch {env.get('torch')}, {env.get('threads')} thread(s), xautodl {env.get('xautodl')}; "
             f"batch {st['batch']}, NB201 C={st['C']} N={st['N']}, DARTS C={st['darts_C']} {st['darts_layers']} cells, "
             f"{st['image_size']}×{st['image_size']}, {st['rounds']} interleaved rounds of {st['steps']} step(s) after "
             f"{st['warmup']} warm-up; {_load(env)}.", "",
             "| config | implementation | steps/s, median (min–max) | ÷ reference, median of rounds (range) | peak GiB |",
             "|---|---|---:|---:|---:|"]
    ratios = {(r["config"], r["impl"]): r for r in b.get("ratios", [])}
    for r in b["results"]:
        q = ratios.get((r["config"], r["impl"]))
        ratio = "1.00× (the reference)" if r["impl"] == "reference" else (
            "–" if q is None else f"{q['speedup']:.2f}× ({q['speedup_min']:.2f}–{q['speedup_max']:.2f}×)")
        lines.append(f"| {r['config']} | {r['impl']} | {_f(r['steps_per_s'], 3)} ({_f(r['steps_per_s_min'], 3)}–"
                     f"{_f(r['steps_per_s_max'], 3)}) | {ratio} | {_f(r.get('peak_mem_gib'))} |")
    for s in b.get("skipped", []):
        lines.append(f"| {s['config']} | {s['impl']} | not run: {s['reason']} | | |")
    return lines


def population_table(p: dict[str, Any], label: str) -> list[str]:
    st = p["settings"]
    lines = [f"*{label}*: device {p.get('device')}, torch {p.get('torch')}, {p.get('threads')} thread(s); NB201 C={st['C']} "
             f"N={st['N']}, batch {st['batch']}, {st['image_size']}×{st['image_size']}, DARTS-V{st['order']}; "
             f"{st['rounds']} interleaved rounds of {st['steps']} step(s); populations with "
             f"{', '.join(p.get('pop_switches') or []) or 'the plain (vmapped) supernet'}"
             f"{'' if not p.get('pop_refused') else ' (fused cells refused: ' + p['pop_refused'] + ')'}; "
             f"{_load({'loadavg': p.get('loadavg'), 'threads': p.get('threads')})}.", "",
             "| impl | ATen ops / step / member | + view ops | steps/s per member, median (min–max) | member steps/s "
             "| vs one plain run | vs one fused run | vs one fused + CUDA graphs run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in p["rows"].items():
        lines.append(f"| {name} | {_f(r['ops_per_member'], 0)} | {_f(r['view_ops_per_member'], 0)} | "
                     f"{_f(r['steps_per_s_median'], 3)} ({_f(r['steps_per_s_min'], 3)}–{_f(r['steps_per_s_max'], 3)}) | "
                     f"{_f(r['aggregate_median'], 3)} | {_f(r['ratio_vs_single'])}× | "
                     f"{'–' if r.get('ratio_vs_fused') is None else _f(r['ratio_vs_fused']) + '×'} | "
                     f"{'–' if r.get('ratio_vs_fused_graphs') is None else _f(r['ratio_vs_fused_graphs']) + '×'} |")
    for name, why in (p.get("graphs_failed") or {}).items():
        lines.append(f"\n{name}: failed, left out ({why}).")
    if p.get("graphs_skipped"):
        lines.append(f"\nCUDA-graph rows skipped: {p['graphs_skipped']}.")
    return lines


# ----------------------------------------------------------------------------- GPU session (results.json)


def _label(res: dict[str, Any]) -> str:
    dev = res.get("device") or {}
    if res.get("dry_run"):
        return f"CPU dry run of tools/gpu_session.sh at tiny sizes ({dev.get('name', 'CPU')}): not GPU figures"
    return (f"GPU: {dev.get('name')}, {dev.get('memory_gib')} GiB, CUDA {dev.get('cuda')}, torch {dev.get('torch')}, "
            f"commit {(dev.get('commit') or '?')[:10]}; measured by tools/gpu_session.sh")


def gpu_tables(res: dict[str, Any]) -> dict[str, list[str]]:
    label, ph = _label(res), res.get("phases", {})
    out: dict[str, list[str]] = {}
    status = ", ".join(f"{n} {e['status']}" for n, e in ph.items())
    out["gpu-status"] = [f"*{label}*. Phases: {status or 'none'}."]

    def missing(name: str) -> list[str]:
        e = ph.get(name)
        return [f"*{label}*: the `{name}` phase " + ("did not run." if e is None else f"ended `{e['status']}` (no figures).")]

    b = ph.get("bench", {}).get("result")
    out["gpu-bench"] = speed_table(b, label) if b else missing("bench")
    p = ph.get("population", {}).get("result")
    out["gpu-population"] = population_table(p, label) if p else missing("population")
    c = ph.get("collapse", {}).get("result")
    if c:
        lines = [f"*{label}*: examples/studies/nb201_collapse.yaml's runs, {c['steps_per_run']} step(s) each (one epoch), "
                 f"{len(c['populations'])} population(s), the rest one by one; slice wall {c['slice_wall_s']} s. "
                 f"**Projected full study ({c['full_epochs']} epochs): {c['projected_full_study_s'] / 3600:.2f} h** "
                 f"({c['projection']}).", "",
                 "| run | population | batch | fused cells | CUDA graphs | epoch time for the slice, s | projected run, h |",
                 "|---|---:|---:|---|---|---:|---:|"]
        for r in c["runs"]:
            lines.append(f"| {r['run']} | {'–' if r['population'] is None else r['population']} | {r['batch']} | "
                         f"{r['fused_cells']} | {r['cuda_graphs']} | {_f(r['epoch_time_s'], 3)} | {_f(r['projected_run_s'] / 3600)} |")
        for g in c.get("refused", []):
            lines.append(f"| {g['runs']} | not fused: {g['reason']} | | | | | |")
        out["gpu-collapse"] = lines
    else:
        out["gpu-collapse"] = missing("collapse")
    s = ph.get("search", {}).get("result")
    if s:
        sc = ((s.get("scores") or {}).get("nb201") or {}).get("cifar10_test")
        r = s["recipe"]
        out["gpu-search"] = [
            f"*{label}*: NB201 DARTS-V1 ({r['space']['params']}, batch {r['batch_size']}, {r['epochs']} epochs, fused cells "
            f"{r['fused_cells']}, CUDA graphs {r['cuda_graphs']}, data {r['data'].get('source')}).", "",
            "| finished | epochs done | global step (this call: from → to) | median epoch time, s | projected search, min "
            "| genotype | NB201 CIFAR-10 test |", "|---|---:|---:|---:|---:|---|---:|",
            f"| {s['finished']} | {s['epochs_done']} / {r['epochs']} | {s['global_step_before']} → {s['global_step_after']} | "
            f"{_f(s.get('epoch_time_s_median'), 3)} | "
            f"{'–' if s.get('projected_search_s') is None else _f(s['projected_search_s'] / 60, 1)} | "
            f"{'`' + s['genotype'].replace('|', chr(92) + '|') + '`' if s.get('genotype') else '(not finished)'} | {_f(sc)} |"]
    else:
        out["gpu-search"] = missing("search")
    return out


def cpu_tables(results_dir: Path = RESULTS) -> dict[str, list[str]]:
    out = {}
    for name, (fname, command) in CPU_SOURCES.items():
        f = results_dir / fname
        if not f.exists():
            out[name] = [f"**To be re-measured on an idle machine** (no committed result file `benchmarks/results/{fname}`): "
                         f"with nothing else running, `{command}`, then `python tools/gpu_tables.py --write`."]
            continue
        data = json.loads(f.read_text())
        label = f"CPU, from `benchmarks/results/{fname}`"
        out[name] = population_table(data, label) if name == "cpu-population" else speed_table(data, label)
    return out


def fill(text: str, tables: dict[str, list[str]]) -> tuple[str, list[str]]:
    """Replace each marked block whose name is in ``tables``; return the text and the names replaced."""
    done = []
    for name, lines in tables.items():
        pat = re.compile(re.escape(BEGIN.format(name)) + r"\n.*?" + re.escape(END.format(name)), re.S)
        body = BEGIN.format(name) + "\n<!-- generated by tools/gpu_tables.py: do not edit -->\n" + "\n".join(lines) + "\n" + END.format(name)
        text, n = pat.subn(lambda _m: body, text)
        if n:
            done.append(name)
    return text, done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", help="results.json of tools/gpu_session.sh (else: the CPU tables)")
    p.add_argument("--results-dir", default=str(RESULTS), help="CPU result files")
    p.add_argument("--write", action="store_true", help="write the tables into the files (else print them)")
    p.add_argument("--files", nargs="+", default=[str(f) for f in FILES])
    a = p.parse_args(argv)
    if a.gpu:
        res = json.loads(Path(a.gpu).read_text())
        if res.get("schema") != "diffnas-gpu-session/1":
            print(f"gpu_tables: {a.gpu} is not a tools/gpu_session.sh results file", file=sys.stderr)
            return 2
        tables = gpu_tables(res)
        own = {f.resolve() for f in FILES}
        if a.write and res.get("dry_run") and any(Path(f).resolve() in own for f in a.files):
            print("gpu_tables: a dry run's CPU figures are not written into this repository's READMEs (use --files)",
                  file=sys.stderr)
            return 2
    else:
        tables = cpu_tables(Path(a.results_dir))
    if not a.write:
        for name, lines in tables.items():
            print(BEGIN.format(name), *lines, END.format(name), sep="\n")
        return 0
    found = set()
    for f in a.files:
        text = Path(f).read_text()
        new, done = fill(text, tables)
        found |= set(done)
        if new != text:
            Path(f).write_text(new)
        print(f"gpu_tables: {f}: {', '.join(done) or 'no marked table'}")
    absent = set(tables) - found
    if absent:
        print(f"gpu_tables: no markers for {', '.join(sorted(absent))} in {', '.join(a.files)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
