"""``diffnas population``: several recipes of one composition as ONE population-fused search.

    diffnas population RECIPE... --out DIR [--set key.path=value ...]
    diffnas population RECIPE... --run-dirs RUN_DIR...    # one run directory per recipe
    diffnas population --resume RUN_DIR... [--force]
    diffnas population ... --auto FILE     # fused only where a calibration measures it faster

Member ``i`` (recipe ``NAME.yaml``) writes ``DIR/<i>-NAME`` (or the i-th ``--run-dirs``), the run
directory its separate ``diffnas search`` would write (see :mod:`diffnas.core.population`). ``--set``
applies to every member. What cannot be fused exits with status 2 and names why; nothing is written
then. With ``--fallback`` the members then run one after another as separate searches instead (what a
study's population work items run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("population", help="run several recipes of one composition as one fused search",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="*", help="recipe files (one per member)")
    p.add_argument("--out", help="folder for the members' run directories")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a value in every recipe")
    p.add_argument("--run-dirs", nargs="+", metavar="RUN_DIR", help="the members' run directories (instead of --out)")
    p.add_argument("--resume", nargs="+", metavar="RUN_DIR", help="continue the population saved in these run directories")
    p.add_argument("--force", action="store_true",
                   help="with --resume: continue even though a member's recipe.yaml was edited since its checkpoint "
                        "(recorded in its metrics.jsonl)")
    p.add_argument("--fallback", action="store_true",
                   help="if the members cannot be fused, run them one after another as separate searches")
    p.add_argument("--auto", metavar="FILE",
                   help="calibrate first: time a few population steps against one member's plain steps in this "
                        "process, run fused only where the population is faster (else the members one by one), and "
                        "write the decision and figures to FILE (JSON)")
    p.add_argument("--calibration-rounds", type=int, default=3, metavar="N",
                   help="with --auto: interleaved timed rounds (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..core.errors import DiffnasError, RecipeError
    from ._format import result_lines

    progress = False if args.no_progress else None

    if args.resume:
        if args.recipes:
            raise DiffnasError("give either RECIPE... or --resume RUN_DIR..., not both")
        dirs = [Path(d) for d in args.resume]
        fused = lambda: api.resume_population(dirs, force=args.force, progress=progress)  # noqa: E731
        alone = lambda: [api.resume(d, progress=progress, force=args.force) for d in dirs]  # noqa: E731
    else:
        if args.force:
            raise DiffnasError("--force applies to --resume only")
        if not args.recipes or not (args.out or args.run_dirs):
            raise DiffnasError("diffnas population: RECIPE... and --out DIR (or --run-dirs) are required "
                               "(or --resume RUN_DIR...)")
        if args.run_dirs and len(args.run_dirs) != len(args.recipes):
            raise DiffnasError(f"--run-dirs: {len(args.run_dirs)} directories for {len(args.recipes)} recipes")
        dirs = ([Path(d) for d in args.run_dirs] if args.run_dirs
                else [Path(args.out) / f"{i}-{Path(r).stem}" for i, r in enumerate(args.recipes)])
        fused = lambda: api.search_population(args.recipes, dirs, overrides=args.set, progress=progress)  # noqa: E731
        alone = lambda: [api.search(r, d, overrides=args.set, progress=progress)  # noqa: E731
                         for r, d in zip(args.recipes, dirs)]
    if args.calibration_rounds < 1:
        raise DiffnasError(f"--calibration-rounds must be at least 1, got {args.calibration_rounds}")
    try:
        if args.auto:
            from ..core.recipe import read_yaml
            from ..study.populations import calibrate_and_record, decision_line

            recipes = [read_yaml(Path(d) / "recipe.yaml") for d in dirs] if args.resume else args.recipes
            fig = calibrate_and_record(recipes, Path(args.auto), args.calibration_rounds,
                                       [str(d) for d in dirs], overrides=None if args.resume else args.set)
            print(decision_line(fig), file=sys.stderr)
            if fig["decision"] == "separate":
                fused = alone
        summaries = fused()
    except RecipeError as exc:  # refused before anything was written
        if not args.fallback:
            raise
        print(f"cannot be fused, running the members one by one: {str(exc).splitlines()[-1].strip()}", file=sys.stderr)
        summaries = alone()
    for d, s in zip(dirs, summaries):  # what `diffnas search` prints, per member
        for line in result_lines(d, s):
            print(line)
    return 0
