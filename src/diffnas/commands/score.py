"""``diffnas score GENOTYPE_OR_RUN_DIR``: benchmark numbers for a discrete architecture.

* NAS-Bench-201 genotypes: the ground-truth table (test accuracy after 200 epochs on CIFAR-10,
  CIFAR-100 and ImageNet16-120; :mod:`diffnas.benchmarks.nb201`), and with ``--nats-dir DIR`` the
  official NATS-Bench "simple" files (train / valid / test accuracy on cifar10-valid, cifar10,
  cifar100 and ImageNet16-120; :mod:`diffnas.benchmarks.nats`).
* DARTS-space genotypes: the NAS-Bench-301 surrogate's predicted CIFAR-10 validation accuracy
  (:mod:`diffnas.benchmarks.nb301`; needs onnxruntime and the surrogate files under the data root).
* Every other installed scorer plugin (``diffnas_score_genotype``) is asked as well.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import DiffnasError
from ._target import load_genotype


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
    """``{"genotype", "space", "scores": {scorer: {...}}}`` for ``target`` (see the module docstring)."""
    from ..registry import get_plugin_manager

    genotype, run_dir = load_genotype(target)
    context: dict[str, Any] = {"data_root": data_root}
    scores: dict[str, Any] = {}
    for res in get_plugin_manager().hook.diffnas_score_genotype(genotype=genotype, context=context):
        if res:
            scores.update(res)
    if genotype.space == "darts" and "nb301" not in scores:
        from ..benchmarks.nb301 import load_surrogate

        load_surrogate(data_root).predict(genotype)  # raises the reason (files, onnxruntime, encoding)
    if nats_dir is not None:
        if genotype.space != "nb201":
            raise DiffnasError(f"--nats-dir needs a NAS-Bench-201 genotype, this one is of space {genotype.space!r}")
        from ..benchmarks.nats import NATSTopology

        scores["nats"] = NATSTopology(nats_dir).info(genotype.to_nb201_string(), hp=hp)
    if not scores:
        raise DiffnasError(f"no scorer knows this {genotype.space!r} genotype (NB201 genotypes use the NB201 table, "
                           f"DARTS genotypes the NB301 surrogate)")
    out = {"genotype": str(genotype), "space": genotype.space, "scores": scores}
    if run_dir is not None:
        out["run_dir"] = str(run_dir)
    return out


def run(args: argparse.Namespace) -> int:
    res = score(args.target, args.nats_dir, args.hp, args.data_root)
    if args.json:
        print(json.dumps(res, indent=2, sort_keys=True))
        return 0
    print(f"genotype: {res['genotype']}")
    sc = res["scores"]
    if "nb201" in sc:
        e = sc["nb201"]
        print(f"nb201 #{e['index']} test accuracy (200 epochs, mean of 3 seeds): cifar10 {e['cifar10_test']:.2f}  "
              f"cifar100 {e['cifar100_test']:.2f}  imagenet16-120 {e['imagenet16_test']:.2f}")
    if "nb301" in sc:
        print(f"nb301 surrogate: predicted CIFAR-10 val accuracy {100 * sc['nb301']['val_acc']:.2f}% (epoch {sc['nb301']['epoch']})")
    if "nats" in sc:
        n = sc["nats"]
        print(f"NATS-Bench #{n['index']} ({n['epochs']} epochs, mean over seeds):")
        print(f"  {'dataset':<16}{'train':>8}{'valid':>8}{'test':>8}{'params M':>10}{'FLOPs M':>10}")
        fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"  # noqa: E731
        for ds in ("cifar10-valid", "cifar10", "cifar100", "ImageNet16-120"):
            if ds in n:
                d = n[ds]
                print(f"  {ds:<16}{fmt(d['train_acc'])}{fmt(d['valid_acc'])}{fmt(d['test_acc'])}{d['params_M']:10.3f}{d['flops_M']:10.2f}")
    for name, v in sc.items():
        if name not in ("nb201", "nb301", "nats"):
            print(f"{name}: {json.dumps(v, sort_keys=True)}")
    return 0
