"""The fused DARTS-space supernet (trainer.fused_cells): same mathematics as the plain one, refusals, a step."""

from __future__ import annotations

import pytest
import torch

from diffnas.core.cells import alpha_shape
from diffnas.core.errors import RecipeError
from diffnas.core.protocols import OpWeights
from diffnas.fast.darts import FusedDartsNetwork, param_mapping, plain_state_from_fused
from diffnas.core.graphs import find_host_syncs
from diffnas.plugins.search_spaces.darts import DartsSpace, DartsSupernet
from diffnas.testing import build_tiny_search, run_tiny, tiny_recipe

FUSED = {"fused_cells": True}
SGD_ARCH = {"arch_optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny nets are dominated by per-op overhead; one thread avoids OpenMP spinning on busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _space(**kw) -> DartsSpace:
    return DartsSpace(DartsSpace.Config(C=4, layers=3, **kw))  # cells: normal, reduce, reduce


def _pair(channels_last=False, **kw):
    sp = _space(**kw)
    torch.manual_seed(0)
    plain = sp.build_supernet(10).double()
    fused = FusedDartsNetwork.from_plain(plain)
    if channels_last:
        plain = plain.to(memory_format=torch.channels_last)
        fused = fused.to(memory_format=torch.channels_last)
    return sp, plain, fused


def _alphas(sp):
    gen = torch.Generator().manual_seed(1)
    return {k: torch.randn(*alpha_shape(g), dtype=torch.float64, generator=gen).requires_grad_()
            for k, g in sp.cells().items()}


def _grads(net, x, alphas):
    for a in alphas.values():
        a.grad = None
    net.zero_grad(set_to_none=True)
    y = net(x, {k: OpWeights(torch.softmax(a, -1)) for k, a in alphas.items()})
    torch.nn.functional.cross_entropy(y, torch.arange(x.shape[0]) % 10).backward()
    return y.detach(), {k: a.grad.clone() for k, a in alphas.items()}, {n: p.grad for n, p in net.named_parameters()}


CASES = {"darts8": {}, "s2": {"subspace": "s2"}, "s3": {"subspace": "s3"},
         "pool_dil": {"ops": ["none", "max_pool_3x3", "avg_pool_3x3", "dil_conv_5x5"]},
         "no_running_stats": {"track_running_stats": False}}


CL_CASES = ("darts8", "s2", "s3")


@pytest.mark.parametrize("case,channels_last", [(c, False) for c in CASES] + [(c, True) for c in CL_CASES],
                         ids=list(CASES) + [f"{c}-channels_last" for c in CL_CASES])
def test_fused_equals_plain_forward_and_gradients(case, channels_last):
    sp, plain, fused = _pair(channels_last, **CASES[case])
    assert [c.reduction for c in plain.cells] == [False, True, True]
    alphas = _alphas(sp)
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y0, a0, g0 = _grads(plain, x, alphas)
    y1, a1, g1 = _grads(fused, x, alphas)
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-10)
    for cell in ("normal", "reduce"):  # architecture gradients of both cell types
        assert a0[cell].abs().sum() > 0
        torch.testing.assert_close(a1[cell], a0[cell], rtol=1e-9, atol=1e-10)
    mapping = param_mapping(plain, fused)
    assert {p for p, _, _ in mapping} == {n for n, _ in plain.named_parameters()}
    assert {f for _, f, _ in mapping} == {n for n, _ in fused.named_parameters()}
    for pname, fname, sl in mapping:  # weight gradients, through the parameter mapping
        gf = g1[fname] if sl is None else g1[fname][sl]
        torch.testing.assert_close(gf, g0[pname], rtol=1e-9, atol=1e-10, msg=lambda m: f"{pname}: {m}")
    # BN running statistics (one training forward each) and the way back to a plain state dict
    state = plain_state_from_fused(plain, fused)
    for k, v in plain.state_dict().items():
        if not k.endswith("num_batches_tracked"):  # stem/preprocessing BNs are shared: counted twice here
            torch.testing.assert_close(state[k], v, rtol=1e-9, atol=1e-12, msg=lambda m: f"{k}: {m}")
    if not channels_last:  # eval mode uses the running statistics
        plain.eval()
        fused.eval()
        with torch.no_grad():
            ow = {k: OpWeights(torch.softmax(a, -1)) for k, a in alphas.items()}
            torch.testing.assert_close(fused(x, ow), plain(x, ow), rtol=1e-9, atol=1e-10)


def test_fused_float32_autocast_runs():
    sp, plain, fused = _pair()
    plain.float()
    fused.float()
    alphas = {k: a.detach().float().requires_grad_() for k, a in _alphas(sp).items()}
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y0, a0, _ = _grads(plain, x, alphas)
    y1, a1, _ = _grads(fused, x, alphas)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a1["normal"], a0["normal"], rtol=1e-3, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, a, _ = _grads(fused, x, alphas)
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in a.values())


def _darts_recipe(params=None, **sections):
    trainer = {**tiny_recipe()["trainer"], **sections.pop("trainer", {})}
    return tiny_recipe(search_space={"name": "darts", "params": {"C": 4, "layers": 3, **(params or {})}},
                       trainer=trainer, **sections)


def test_fused_search_steps_match_plain_search():
    plain = build_tiny_search(_darts_recipe(trainer={"deterministic": True}))
    fused = build_tiny_search(_darts_recipe(trainer={"deterministic": True, **FUSED}))
    assert type(plain.model) is DartsSupernet and isinstance(fused.model, FusedDartsNetwork)
    for s in (plain, fused):
        s.model.double()
        s._epoch_sums = {}
        for k in s.alphas:
            s.alphas[k].data = s.alphas[k].data.double()
        s.a_optimizer = torch.optim.Adam(s.alphas.parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        for loader in (s.train_loader, s.valid_loader):
            loader.mean, loader.std = loader.mean.double(), loader.std.double()
    # the fused search starts from exactly the plain search's weights (same seed)
    start = plain_state_from_fused(plain.model, fused.model)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(start[k], v)
    for step in range(3):
        plain._one_step(0, step)
        fused._one_step(0, step)
    for cell in ("normal", "reduce"):
        torch.testing.assert_close(fused.alphas[cell], plain.alphas[cell], rtol=1e-7, atol=1e-10)
    state = plain_state_from_fused(plain.model, fused.model)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-6, atol=1e-9, msg=lambda m: f"{k}: {m}")


def test_fused_step_does_not_read_the_device():
    """No host synchronisation in a fused step (what a CUDA graph needs); SGD for α because CPU Adam
    reads its step count on the host."""
    s = build_tiny_search(_darts_recipe(trainer={**FUSED, **SGD_ARCH, "channels_last": True}))
    assert isinstance(s.model, FusedDartsNetwork)
    train = s.train_loader.batch(0, 0)
    valid = s.valid_loader.batch(0, 0)
    _, found = find_host_syncs(lambda: s._step(train, valid))
    assert found == []


def _refusal(recipe) -> str:
    with pytest.raises(RecipeError) as exc:
        build_tiny_search(recipe)
    msg = str(exc.value)
    assert "recipe.trainer.fused_cells" in msg and "trainer.fused_cells: false" in msg
    return msg


def test_refuses_noise_op_s4():
    assert "noise" in _refusal(_darts_recipe({"subspace": "s4"}, trainer=FUSED))


def test_refuses_per_edge_op_lists_s1():
    assert "different op lists" in _refusal(_darts_recipe({"subspace": "s1"}, trainer=FUSED))


def test_refuses_supernet_modified_by_a_regulariser():
    msg = _refusal(_darts_recipe(regularisers=[{"name": "darts_minus_skip"}], trainer=FUSED))
    assert "per-edge" in msg


def test_refuses_active_mask_relaxation():
    assert "active" in _refusal(_darts_recipe(relaxation={"name": "gumbel_softmax"}, trainer=FUSED))


def test_refuses_other_search_spaces_naming_both():
    recipe = tiny_recipe(search_space={"name": "lhd", "params": {}}, trainer={**tiny_recipe()["trainer"], **FUSED})
    msg = _refusal(recipe)
    assert "nb201" in msg and "darts" in msg


def test_fused_tiny_run_with_speed_switches_and_checkpoint(tmp_path):
    s, summary = run_tiny(_darts_recipe(trainer={**FUSED, "epochs": 1, "channels_last": True, "autocast": "bf16"}),
                          out_dir=tmp_path / "run")
    assert isinstance(s.model, FusedDartsNetwork)
    assert summary["epochs_run"] == 1 and summary["genotype"]
    assert all(torch.isfinite(a).all() for a in s.alphas.values())
    again = build_tiny_search(_darts_recipe(trainer={**FUSED, "epochs": 1, "channels_last": True, "autocast": "bf16"}))
    again.load_state_dict(s.state_dict())  # a fused checkpoint resumes into a fused search
    for k, v in s.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[k], v)
