"""Fast paths of the search step, each behind a switch in the recipe's ``trainer`` section.

* :mod:`diffnas.fast.nb201`: ``trainer.fused_cells``, a fused NAS-Bench-201 supernet with the same
  mathematics as the plain one in fewer, larger kernels.
"""
