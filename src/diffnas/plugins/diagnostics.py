"""Costly collapse diagnostics, on request (recipe section ``diagnostics``).

The cheap diagnostics (op counts of the current genotype, ``ops.parameter_free``, and the entropy of
the op strengths) are written by the engine at every epoch. This bundled plugin adds, when the recipe
asks for them, every ``diagnostics.every`` epochs (and at the last epoch)::

    diagnostics:
      hessian_eigenvalue: true     # record["hessian_eigenvalue"]
      gradient_correlation: true   # record["gradient_correlation"] = {"inner", "cosine", "against"}
      alpha_gradients: true        # record["alpha_gradients"] = {cell: {op: mean ∂L/∂α over edges}}
      every: 1                     # epochs between measurements
      batches: 1                   # fixed batches the measurements average over
      iterations: 10               # power-iteration steps
      every_steps: 0               # step records (diffnas.core.step_records) every this many steps
      step_hessian: false          # and the eigenvalue in each of them (costly)

Both use **fixed** batches: batch ``b`` is the images ``b·B … (b+1)·B − 1`` of the split in storage
order, normalised and not augmented, so that successive epochs are measured on the same data. The
measurements leave the search exactly as they found it: no optimiser state or ``.grad`` is touched,
the torch random state is forked (a sampling relaxation draws one fixed sample per measurement, the
same for every Hessian-vector product), and buffers of the supernet (BatchNorm statistics) are restored.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..core.hookspecs import hookimpl

MEASURE_SEED = 20240607


# --------------------------------------------------------------------------- helpers


def fixed_batches(loader: Any, batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``batches`` batches of ``loader``'s split in storage order, without augmentation."""
    out = []
    n, bs = loader.n, loader.batch_size
    for b in range(max(1, min(batches, len(loader)))):
        idx = torch.arange(b * bs, (b + 1) * bs, device=loader.device) % n
        x = (loader.x.index_select(0, idx).float() - loader.mean) / loader.std
        if loader.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.append((x, loader.y.index_select(0, idx)))
    return out


class _Preserved:
    """Fork the torch RNG and restore the supernet's buffers on exit."""

    def __init__(self, search: Any):
        self.search = search

    def __enter__(self) -> "_Preserved":
        dev = self.search.device
        self._fork = torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else [])
        self._fork.__enter__()
        self._buffers = {k: v.detach().clone() for k, v in self.search.model.named_buffers()}
        return self

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for k, v in self.search.model.named_buffers():
                if k in self._buffers:
                    v.copy_(self._buffers[k])
        self._fork.__exit__(*exc)


def _val_loss_fn(search: Any, batch: tuple[torch.Tensor, torch.Tensor], seed: int) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
    """``f(alphas) = CE(supernet(x; relaxation(alphas)), y)`` with one fixed relaxation sample."""
    names = list(search.alphas.keys())
    x, y = batch

    def f(alphas: Sequence[torch.Tensor]) -> torch.Tensor:
        torch.manual_seed(seed)  # the same sample (if any) for every evaluation
        ow = {n: search.relaxation.cell_op_weights(n, a, search) if n in search.cells else a  # extras pass as they are
              for n, a in zip(names, alphas)}
        return nn.functional.cross_entropy(search.forward(x, ow), y)

    return f


def power_iteration(hvp: Callable[[list[torch.Tensor]], list[torch.Tensor]], like: Sequence[torch.Tensor],
                    iterations: int, generator: torch.Generator | None = None) -> float:
    """Dominant (largest-magnitude) eigenvalue of a symmetric operator given by ``hvp``.

    ``v ← Hv / ‖Hv‖`` for ``iterations`` steps from a fixed random unit vector; returns the last
    Rayleigh quotient ``vᵀHv`` (signed).
    """
    gen = generator or torch.Generator().manual_seed(MEASURE_SEED)
    v = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device=t.device, dtype=t.dtype) for t in like]
    norm = torch.sqrt(sum((a * a).sum() for a in v))
    v = [a / norm for a in v]
    lam = torch.zeros(())
    for _ in range(max(1, iterations)):
        hv = hvp(v)
        lam = sum((a * b).sum() for a, b in zip(v, hv))
        norm = torch.sqrt(sum((a * a).sum() for a in hv))
        if float(norm) == 0.0:
            return 0.0
        v = [a / norm for a in hv]
    return float(lam)


# --------------------------------------------------------------------------- the two measurements


def hessian_eigenvalue(search: Any, batches: int = 1, iterations: int = 10) -> float:
    """Dominant eigenvalue of the Hessian of the validation loss with respect to α.

    ``L(α) = mean over the fixed validation batches of CE(supernet(x; w, relaxation(α)), y)`` (the
    training half when the update rule uses no validation batch), with the weights ``w`` held fixed
    and all cell types' α concatenated into one vector. The Hessian is never formed: each power
    iteration computes ``Hv = ∇_α (∇_α L · v)`` by double backward (Zela et al., ICLR 2020, track the
    same quantity). Returns the Rayleigh quotient ``vᵀHv`` after ``iterations`` steps.
    """
    loader = search.valid_loader or search.train_loader
    data = fixed_batches(loader, batches)
    alphas = [a.detach().clone().requires_grad_(True) for a in search.alphas.values()]
    with _Preserved(search):
        fns = [_val_loss_fn(search, b, MEASURE_SEED + i) for i, b in enumerate(data)]

        def hvp(v: list[torch.Tensor]) -> list[torch.Tensor]:
            out = [torch.zeros_like(a) for a in alphas]
            for f in fns:
                g = torch.autograd.grad(f(alphas), alphas, create_graph=True)
                dot = sum((gi * vi).sum() for gi, vi in zip(g, v))
                hv = torch.autograd.grad(dot, alphas, allow_unused=True)
                out = [o + (h.detach() if h is not None else 0.0) / len(fns) for o, h in zip(out, hv)]
            return out

        return power_iteration(hvp, alphas, iterations)


def learnable_op_parameters(search: Any) -> list[nn.Parameter]:
    """Weights of the candidate ops inside the searched cells (stem, reduction blocks and classifier
    excluded); all supernet weights if the supernet has no :class:`~diffnas.core.cells.SearchCell`."""
    from ..core.cells import SearchCell

    params: list[nn.Parameter] = []
    seen: set[int] = set()
    for m in search.model.modules():
        if isinstance(m, SearchCell):
            for p in m.mixed.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params or [p for p in search.weight_parameters() if p.requires_grad]


def gradient_correlation(search: Any, batches: int = 1,
                         pairs: list[tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] | None = None
                         ) -> dict[str, float]:
    """The gradient correlation of Single-DARTS §5.2.1 (Hou, Jin & Chen, ICCVW 2021).

    The paper (§4.2, Eqs. 7–8) writes the α-gradient of a learnable op ``o(x) = w·x`` as the
    α-step loss's gradient at the edge output times ``w``, where ``w`` was last moved along the
    weight-step loss's gradient ``−η∇_w L_train``; the product of these two gradients is the term it
    calls the *gradient correlation*. In bi-level optimisation (DARTS) the two losses are taken on
    different batches (validation vs training), are independent, and the term is near zero in
    expectation; in single-level optimisation both come from the same batch. The symbols of the
    definition were lost from the text we have, so we compute the quantity the text describes:

        g_w = ∇_w L(B_w; w, α)        (the batch the weight step uses: a training batch)
        g_α = ∇_w L(B_α; w, α)        (the batch the α step uses: a validation batch when the
                                       update rule has ``uses_valid_batch``, else the same B_w)
        inner  = ⟨g_α, g_w⟩            cosine = inner / (‖g_α‖·‖g_w‖)

    with ``w`` the weights of the **learnable candidate ops** of the cells (the paper's Eq. 7 "only
    exists for learnable operations"), ``L`` the cross-entropy of the relaxed supernet at the current
    ``(w, α)``, and ``B_w``/``B_α`` the fixed batches of :func:`fixed_batches`; both numbers are
    averaged over ``batches`` batch pairs. ``inner`` is the paper's (unnormalised) quantity.

    **B_α of a single-level rule.** Its α step uses B_w itself, where ``cosine`` would be 1 and
    ``inner`` = ‖g_w‖² by construction, which shows nothing. As Single-DARTS Fig. 2 compares the
    gradients of the train and valid losses, B_α is then a **held-out** batch: the held-out half's
    (the images ``data.train_portion`` leaves out, never trained on), or, when there is none
    (``train_portion: 1.0``), a training batch disjoint from B_w (the fixed batches after B_w's), a
    batch the weights are trained on but not the one the measured gradient comes from. ``against``
    says which: ``"valid"`` (a bi-level rule's validation half), ``"held_out"`` or ``"train"``.
    The test split is never used: it is the found network's final measure.

    :param pairs: explicit ``(B_w, B_α)`` batch pairs (tests); default as above.
    """
    against = "given"
    if pairs is None:
        train = fixed_batches(search.train_loader, batches)
        if search.update_rule.uses_valid_batch and search.valid_loader is not None:
            pairs, against = list(zip(train, fixed_batches(search.valid_loader, batches))), "valid"
        elif getattr(search, "held_out_loader", None) is not None:
            pairs, against = list(zip(train, fixed_batches(search.held_out_loader, batches))), "held_out"
        else:  # no held-out half: the next fixed training batches, disjoint from B_w's where the split allows
            more = fixed_batches(search.train_loader, 2 * batches)
            pairs, against = list(zip(train, (more[batches:] or more)[:len(train)])), "train"
    params = learnable_op_parameters(search)
    inner = cos = 0.0
    with _Preserved(search):
        for i, (bw, ba) in enumerate(pairs):
            grads = []
            for batch in (bw, ba):
                f = _val_loss_fn(search, batch, MEASURE_SEED + i)
                alphas = [a.detach() for a in search.alphas.values()]
                g = torch.autograd.grad(f(alphas), params, allow_unused=True)
                grads.append(torch.cat([(x if x is not None else torch.zeros_like(p)).reshape(-1)
                                        for x, p in zip(g, params)]).double())
            ip = float(grads[0] @ grads[1])
            den = float(grads[0].norm() * grads[1].norm())
            inner += ip
            cos += ip / den if den > 0 else 0.0
    n = max(len(pairs), 1)
    return {"inner": inner / n, "cosine": cos / n, "against": against}


def alpha_gradients(search: Any, batches: int = 1) -> dict[str, dict[str, float]]:
    """The per-op α-gradients of Single-DARTS Fig. 3 (Hou, Jin & Chen, ICCVW 2021, §5.2.2).

    The figure follows, over the search, the gradient that the α step hands each op: for DARTS those of
    the parameter-free ops stay below the learnable ones' (so their α grow), for Single-DARTS the
    learnable ops catch up. Measured here as ``∂L/∂α_{e,o}`` of the loss the α step takes (the
    cross-entropy of the relaxed supernet at the current ``(w, α)``, on the fixed validation batches of a
    rule with ``uses_valid_batch``, else on the fixed training batches, the batch a single-level α step
    uses), averaged over ``batches`` batches and, per op name, over the cell type's edges that offer it:
    ``{cell: {op: value}}``. A negative value means the α step raises that op. The supernet's cells share
    one α per cell type, so this is the gradient summed over every cell of the type (the figure shows the
    last cell's; a per-cell α does not exist here). Leaves the search as it found it (as the other
    measurements)."""
    from ..core.cells import edge_ops

    loader = search.valid_loader if (search.update_rule.uses_valid_batch and search.valid_loader is not None) \
        else search.train_loader
    data = fixed_batches(loader, batches)
    alphas = [a.detach().clone().requires_grad_(True) for a in search.alphas.values()]
    names = list(search.alphas.keys())
    total = [torch.zeros_like(a) for a in alphas]
    with _Preserved(search):
        for i, b in enumerate(data):
            g = torch.autograd.grad(_val_loss_fn(search, b, MEASURE_SEED + i)(alphas), alphas, allow_unused=True)
            total = [t + (x.detach() if x is not None else 0.0) / len(data) for t, x in zip(total, g)]
    out: dict[str, dict[str, float]] = {}
    for name, grad in zip(names, total):
        if name not in search.cells:
            continue
        sums: dict[str, list[float]] = {}
        for ops, row in zip(edge_ops(search.cells[name]), grad.double().tolist()):
            for op, v in zip(ops, row):
                sums.setdefault(op, []).append(v)
        out[name] = {op: sum(v) / len(v) for op, v in sums.items()}
    return out


# --------------------------------------------------------------------------- the hook


def _finite(x: Any) -> Any:
    return x if not isinstance(x, float) or math.isfinite(x) else None


@hookimpl
def diffnas_step_diagnostics(search, record):
    """Add ``hessian_eigenvalue`` to each step record when ``diagnostics.step_hessian`` is set."""
    cfg = getattr(search.recipe, "diagnostics", None)
    if cfg is not None and cfg.step_hessian:
        record["hessian_eigenvalue"] = _finite(hessian_eigenvalue(search, cfg.batches, cfg.iterations))


@hookimpl
def diffnas_epoch_end(search, epoch, record):
    """Add ``hessian_eigenvalue``, ``gradient_correlation`` and ``alpha_gradients`` to the epoch's record
    when enabled."""
    cfg = getattr(search.recipe, "diagnostics", None)
    if cfg is None or not (cfg.hessian_eigenvalue or cfg.gradient_correlation or cfg.alpha_gradients):
        return
    if not ((epoch + 1) % cfg.every == 0 or epoch + 1 == search.epochs):
        return
    if cfg.hessian_eigenvalue:
        record["hessian_eigenvalue"] = _finite(hessian_eigenvalue(search, cfg.batches, cfg.iterations))
    if cfg.gradient_correlation:
        gc = gradient_correlation(search, cfg.batches)
        record["gradient_correlation"] = {k: _finite(v) for k, v in gc.items()}
    if cfg.alpha_gradients:
        record["alpha_gradients"] = {c: {op: _finite(v) for op, v in per_op.items()}
                                     for c, per_op in alpha_gradients(search, cfg.batches).items()}
