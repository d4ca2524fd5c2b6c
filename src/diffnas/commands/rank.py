"""``diffnas rank RUN_DIR [--samples N]``: how well a trained supernet ranks architectures.

Samples N architectures with a seeded generator, scores each by a discretised (one-hot) forward of
the run's trained supernet on the validation half and by the ground truth (NB201 table, or the NB301
surrogate for DARTS cells), and reports Kendall's tau and Spearman's rho
(:mod:`diffnas.benchmarks.ranking`). The full table goes to ``RUN_DIR/ranking.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("rank", help="Kendall tau / Spearman rho of a trained supernet against the ground truth",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished search's run directory (recipe.yaml + checkpoint.pt)")
    p.add_argument("--samples", type=int, default=100, help="architectures to sample (default 100)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batches", type=int, default=10, help="validation batches per architecture (default 10)")
    p.add_argument("--batch-size", type=int, default=None, help="validation batch size (default: the search's)")
    p.add_argument("--metric", default="cifar10_test", help="NB201 column: cifar10_test, cifar100_test or imagenet16_test")
    p.add_argument("--data-root", metavar="DIR", help="data root for the ground truth (default: the run's)")
    p.add_argument("--out", metavar="FILE", help="where to write the JSON report (default RUN_DIR/ranking.json)")
    p.add_argument("--json", action="store_true", help="print the JSON report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmarks.ranking import rank_run
    from ..core.rundir import write_json

    res = rank_run(args.run_dir, samples=args.samples, seed=args.seed, batches=args.batches, batch_size=args.batch_size,
                   metric=args.metric, data_root=args.data_root, progress=not args.no_progress)
    out = Path(args.out) if args.out else Path(args.run_dir) / "ranking.json"
    write_json(out, res)
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return 0
    print(f"{res['samples']} architectures of space {res['space']} (seed {res['seed']}), supernet after "
          f"{res['epochs_trained']} epochs, {res['batches']} validation batches; ground truth {res['ground_truth']}")
    print(f"Kendall tau: {res['kendall_tau']:.4f}  Spearman rho: {res['spearman_rho']:.4f}  "
          f"(Kendall tau of -loss: {res['kendall_tau_loss']:.4f})")
    print(f"report: {out}")
    return 0
