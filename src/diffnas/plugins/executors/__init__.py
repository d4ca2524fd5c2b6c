"""Bundled study executors: ``sequential`` and ``gpus`` (:mod:`.local`), ``ray`` (:mod:`.ray_cluster`)
and ``slurm`` (:mod:`.slurm`). Ray and submitit are optional extras, imported only when their
executor runs."""
