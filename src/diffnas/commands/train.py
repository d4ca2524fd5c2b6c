"""``diffnas train GENOTYPE_OR_RUN_DIR [--recipe TRAIN.yaml] [--out DIR] [--set k=v]``: train the
discrete network of a genotype from scratch (see :mod:`diffnas.training.trainer`).

Without ``--recipe`` the protocol follows the genotype's space: ``examples/train/darts_cifar10.yaml``
settings for DARTS genotypes, ``nb201_cifar10.yaml`` for NB201 and ``lhd_cifar10.yaml`` for LHD genotypes (all are the
schema defaults plus the overrides below). ``--resume RUN_DIR`` continues a stopped training.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..core.errors import DiffnasError

#: the protocol used when no --recipe is given, per genotype space (METHODS.md §1, NB201 paper)
DEFAULT_PROTOCOLS: dict[str, dict[str, Any]] = {
    "darts": {
        "network": {"C": 36, "layers": 20, "auxiliary": True, "drop_path_prob": 0.3},
        "trainer": {"epochs": 600, "batch_size": 96, "cutout": 16, "auxiliary_weight": 0.4, "grad_clip": 5.0,
                    "optimizer": {"name": "sgd", "lr": 0.025, "momentum": 0.9, "weight_decay": 3.0e-4,
                                  "schedule": "cosine", "lr_min": 0.0}},
    },
    "lhd": {  # chaoji90/LHD: eval/cifar10/train.py defaults (drop-path 0.01 per concat node of the normal cell)
        "network": {"C": 36, "layers": 20, "auxiliary": True, "drop_path_prob": 0.01},
        "trainer": {"epochs": 600, "batch_size": 64, "cutout": 16, "auxiliary_weight": 0.4, "grad_clip": 5.0,
                    "optimizer": {"name": "sgd", "lr": 0.025, "momentum": 0.9, "weight_decay": 3.0e-4,
                                  "schedule": "cosine", "lr_min": 0.0}},
    },
    "nb201": {
        "network": {"C": 16, "N": 5},
        "trainer": {"epochs": 200, "batch_size": 256, "cutout": 0, "grad_clip": None,
                    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5.0e-4,
                                  "schedule": "cosine", "lr_min": 0.0}},
    },
}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a genotype's discrete network from scratch",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", nargs="?", help="a search's run directory, a genotype file, or a genotype string")
    p.add_argument("--recipe", metavar="TRAIN.yaml", help="training recipe (default: the space's standard protocol)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: output.dir or runs/train-<time>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a recipe value")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the training saved in RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier training in --out (kept in OUT/.replaced-<time>/ until the new run's first "
                        "checkpoint); without it such a directory is refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..cli import set_resume_hint
    from ..training import resume_trainer

    progress = False if args.no_progress else None
    if args.resume:
        if args.target or args.recipe or args.set or args.overwrite:
            raise DiffnasError("--resume RUN_DIR takes no genotype, --recipe, --set or --overwrite (the run's own "
                               "recipe is used)")
        set_resume_hint(f"diffnas train --resume {args.resume}")
        trainer = resume_trainer(args.resume, api.catalogue())
        out = args.resume
    else:
        if not args.target:
            raise DiffnasError("train: a GENOTYPE_OR_RUN_DIR (or --resume RUN_DIR) is required")
        trainer = api.build_trainer(args.target, args.recipe, args.out, args.set, overwrite=args.overwrite)
        out = str(trainer.out_dir)
        set_resume_hint(f"diffnas train --resume {out}")
    print(f"network: {type(trainer.model).__name__}, {trainer.params / 1e6:.3f} M params, {trainer.flops / 1e6:.2f} M FLOPs "
          f"(multiply-adds, input {list(trainer.input_shape)})")
    summary = trainer.run(progress=progress)
    print(f"run directory: {out}")
    for k in ("test_acc", "valid_acc"):
        if k in summary:
            print(f"final {k.split('_')[0]} accuracy: {summary[k]:.2f}%")
    print(f"params: {summary['params_M']:.3f} M  FLOPs: {summary['flops_M']:.2f} M  train time: {summary['train_time_s']:.1f} s")
    return 0
