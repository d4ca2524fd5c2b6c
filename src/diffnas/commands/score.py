"""``diffnas score GENOTYPE_OR_RUN_DIR``: benchmark numbers for a discrete architecture.

* NAS-Bench-201 genotypes: the ground-truth table (test accuracy after 200 epochs on CIFAR-10,
  CIFAR-100 and ImageNet16-120; :mod:`diffnas.benchmarks.nb201`), and with ``--nats-dir DIR`` the
  official NATS-Bench "simple" files (train / valid / test accuracy on cifar10-valid, cifar10,
  cifar100 and ImageNet16-120; :mod:`diffnas.benchmarks.nats`).
* DARTS-space genotypes: the NAS-Bench-301 surrogate's predicted CIFAR-10 validation accuracy
  (:mod:`diffnas.benchmarks.nb301`; the surrogate is embedded in the package, onnxruntime comes with
  ``pip install diffnas[surrogate]``; without it the reason is printed and the exit status is 2).
* Every other installed scorer plugin (``diffnas_score_genotype``) is asked as well.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._format import score_lines


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("score", help="benchmark / surrogate numbers for a genotype or a run's result",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="a run directory, a genotype file, or a genotype string")
    p.add_argument("--nats-dir", metavar="DIR", help="official NATS-Bench topology 'simple' folder (meta.pickle.pbz2, 000000.pickle.pbz2, ...)")
    p.add_argument("--hp", choices=("12", "200"), default="200", help="NATS-Bench training budget in epochs (default 200)")
    p.add_argument("--data-root", metavar="DIR", help="data root (default: DIFFNAS_DATA_ROOT or ~/.cache/diffnas/data)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def score(target: str, nats_dir: str | None = None, hp: str = "200", data_root: str | None = None) -> dict[str, Any]:
    """``{"genotype", "space", "scores": {scorer: {...}}}`` for ``target`` (:func:`diffnas.api.score`)."""
    from ..api import score as api_score

    return api_score(target, data_root=data_root, nats_dir=nats_dir, hp=hp)


def run(args: argparse.Namespace) -> int:
    res = score(args.target, args.nats_dir, args.hp, args.data_root)
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return 0
    print(f"genotype: {res['genotype']}")
    sc = res["scores"]
    for line in score_lines(sc):
        print(line)
    if "nats" in sc:
        n = sc["nats"]
        print(f"NATS-Bench #{n['index']} ({n['epochs']} epochs, mean over seeds):")
        print(f"  {'dataset':<16}{'train':>8}{'valid':>8}{'test':>8}{'params M':>10}{'FLOPs M':>10}")
        fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"  # noqa: E731
        for ds in ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120"):
            if ds in n:
                d = n[ds]
                print(f"  {ds:<16}{fmt(d['train_acc'])}{fmt(d['valid_acc'])}{fmt(d['test_acc'])}{d['params_M']:10.3f}{d['flops_M']:10.2f}")
    return 0
