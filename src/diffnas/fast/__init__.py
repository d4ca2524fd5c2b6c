"""Fused supernets of the bundled search spaces (``trainer.fused_cells``).

:mod:`diffnas.fast.nb201` (NAS-Bench-201) and :mod:`diffnas.fast.darts` (the DARTS space) hold the
fused modules; the ``nb201`` and ``darts`` search-space plugins offer them through
:meth:`SearchSpace.fused_supernet <diffnas.core.protocols.SearchSpace.fused_supernet>`, the same
documented method a third-party space implements, and the engine installs whatever a space returns
(:mod:`diffnas.core.fast_paths`). The core never imports this package.
"""
