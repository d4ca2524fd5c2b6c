"""``diffnas study``: run a study (many searches from one YAML file) and write its tables and plots.

    diffnas study STUDY.yaml [--out DIR] [--executor NAME] [--gpus 0,1] [--per-gpu N] [--address ADDR]
    diffnas study STUDY.yaml --executor ray [--address HOST:6379]   # a local Ray cluster, or join one
    diffnas study STUDY.yaml --executor slurm                       # one SLURM job array (submitit)
    diffnas study STUDY.yaml --list
    diffnas study STUDY.yaml --print-commands      # one `diffnas search ...` per unfinished run
    diffnas study STUDY.yaml --run-index I         # run only run I (SLURM_ARRAY_TASK_ID)
    diffnas study STUDY.yaml --warmup-only         # run only the warm-up stage (before the array)
    diffnas study STUDY.yaml --report-only

Exit status: 0 when every run finished, 1 when some run failed (the others still ran; the report is
written), 2 for an invalid study or recipe.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("study", help="run a study (recipes × override axes) and report tables and plots",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="study YAML file")
    p.add_argument("--out", help="output folder (default: the study's `out`, else runs/studies/<name>)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true",
                      help="validate the study and its runs' recipes, list the runs (index, status, id) and exit")
    mode.add_argument("--print-commands", action="store_true",
                      help="print one `diffnas search ...` line per unfinished run (for SLURM, Ray, ...) and exit")
    mode.add_argument("--run-index", type=int, metavar="I", help="run only run I (0-based; a SLURM array task)")
    mode.add_argument("--warmup-only", action="store_true",
                      help="run only the study's warm-up stage (what every run starts from) and exit")
    mode.add_argument("--report-only", action="store_true", help="write tables and plots from existing run directories")
    p.add_argument("--executor", metavar="NAME",
                   help="run with this registered executor instead of the study's (sequential, gpus, ray, slurm, or "
                        "one an installed plugin registers; `diffnas plugins` lists them and their params)")
    p.add_argument("--gpus", help="GPUs for the gpus executor, comma-separated (default: CUDA_VISIBLE_DEVICES / all)")
    p.add_argument("--per-gpu", type=int, help="runs at a time on each GPU (gpus executor)")
    p.add_argument("--address", help="Ray cluster to join (ray executor; default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import study as S

    from ..cli import set_resume_hint

    progress = False if args.no_progress else None
    set_resume_hint(f"diffnas study {args.study}" + (f" --out {args.out}" if args.out else ""))
    if args.list:  # the runs' recipes are validated too, so a study is checked before it is handed on
        from ..api import catalogue

        ls = S.load_study(args.study, args.out, catalogue())
        if ls.warmup is not None:
            print(f"   -  {ls.warmup.status:<8} {ls.warmup.id} (every run starts from it)")
        for spec in ls.specs:
            print(f"{spec.index:4d}  {spec.status:<8} {spec.id}")
        return 0
    if args.print_commands:
        for line in S.print_commands(args.study, args.out):
            print(line)
        return 0
    if args.run_index is not None:
        oc = S.run_index(args.study, args.run_index, args.out, progress=progress)
        print(f"run {args.run_index} ({oc.id}): {oc.status}{': ' + oc.message if oc.message else ''}")
        return 1 if oc.status == "failed" else 0
    if args.warmup_only:
        oc = S.run_warmup(args.study, args.out, progress=progress)
        print(f"warm-up ({oc.id}): {oc.status}{': ' + oc.message if oc.message else ''}")
        return 1 if oc.status == "failed" else 0
    if args.report_only:
        ls, rep = S.report(args.study, args.out, plots=not args.no_plots)
        _print_report(ls, rep)
        return 0
    executor = _executor_from_flags(args, S)
    ls, outcomes, rep = S.run_study(args.study, args.out, executor=executor, progress=progress,
                                    report_plots=not args.no_plots)
    _print_report(ls, rep)
    failed = [o for o in outcomes if o.status == "failed"]
    ran = sum(1 for o in outcomes if o.status == "done")
    skipped = sum(1 for o in outcomes if o.status == "skipped")
    submitted = len(outcomes) - ran - skipped - len(failed)
    print(f"{ran} run(s) ran, {skipped} already finished, {len(failed)} failed"
          + (f", {submitted} submitted" if submitted else ""))
    for o in failed:
        print(f"  failed: {o.id}: {o.message}", file=sys.stderr)
    return 1 if failed else 0


#: CLI shortcuts for executor params: flag, param, executor it belongs to, how to read it
_FLAGS = (("--gpus", "gpus", "gpus", lambda v: [g for g in v.split(",") if g]),
          ("--per-gpu", "per_gpu", "gpus", lambda v: v),
          ("--address", "address", "ray", lambda v: v))


def _executor_from_flags(args: argparse.Namespace, S) -> object:
    """The study's executor with the command line's choices applied (``None``: the study's as written).

    ``--executor NAME`` keeps the study's params when NAME is the study's executor, else starts from
    NAME's defaults; ``--gpus``/``--per-gpu`` imply ``gpus`` and ``--address`` implies ``ray``."""
    from ..core.errors import DiffnasError

    given = [(flag, key, owner, read(getattr(args, key))) for flag, key, owner, read in _FLAGS
             if getattr(args, key) is not None]
    if not args.executor and not given:
        return None
    base = S.load_study(args.study, args.out, None).study.executor
    name = args.executor or given[0][2]
    params = dict(base.params) if name == base.name else {}
    for flag, key, owner, value in given:
        if owner != name:
            raise DiffnasError(f"{flag} is a param of the {owner!r} executor, not of {name!r}")
        params[key] = value
    return S.ExecutorConfig(name, params)


def _print_report(ls, rep) -> None:
    for problem in rep.get("problems", []):
        print(f"diffnas: warning: run {problem} (the run is left out of the tables)", file=sys.stderr)
    print(f"results: {ls.out / 'results.md'} (and results.csv, runs.csv)")
    if rep["plots"]:
        print(f"plots:   {ls.out / 'plots'} ({len(rep['plots'])} files)")
    for r in rep["methods"]:
        c10 = "–" if r["c10_test_mean"] == "" else f"{r['c10_test_mean']:.2f} ± {r['c10_test_std']:.2f}"
        print(f"  {r['method']:<40} {r['runs_done']}/{r['runs_total']} runs  C10 test {c10}")
