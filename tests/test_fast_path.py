"""The fused NB201 supernet (trainer.fused_cells): same mathematics as the plain one, refusals, a run."""

from __future__ import annotations

import pytest
import torch

from diffnas.core.errors import RecipeError
from diffnas.core.protocols import OpWeights
from diffnas.fast.nb201 import FusedNB201Network, param_mapping, plain_state_from_fused
from diffnas.plugins.search_spaces.nb201 import NB201Space
from diffnas.testing import build_tiny_search, run_tiny, tiny_recipe


def _pair(ops=None, mode="split", dtype=torch.float64, channels_last=False, C=4):
    sp = NB201Space(NB201Space.Config(C=C, N=1, **({} if ops is None else {"ops": ops})))
    torch.manual_seed(0)
    plain = sp.build_supernet(10).to(dtype)
    fused = FusedNB201Network.from_plain(plain, conv_mode=mode)
    if channels_last:
        plain = plain.to(memory_format=torch.channels_last)
        fused = fused.to(memory_format=torch.channels_last)
    return sp, plain, fused


def _grads(net, x, alpha):
    alpha.grad = None
    net.zero_grad(set_to_none=True)
    y = net(x, {"normal": OpWeights(torch.softmax(alpha, -1))})
    torch.nn.functional.cross_entropy(y, torch.arange(x.shape[0]) % 10).backward()
    return y.detach(), alpha.grad.clone(), {n: p.grad for n, p in net.named_parameters()}


@pytest.mark.parametrize("ops", [None, ("skip_connect", "nor_conv_3x3"), ("none", "nor_conv_1x1", "avg_pool_3x3")])
@pytest.mark.parametrize("mode", ["split", "embed"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_equals_plain_forward_and_gradients(ops, mode, channels_last):
    sp, plain, fused = _pair(ops, mode, channels_last=channels_last)
    gen = torch.Generator().manual_seed(1)
    alpha = torch.randn(6, len(sp.config.ops), dtype=torch.float64, generator=gen).requires_grad_()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y0, a0, g0 = _grads(plain, x, alpha)
    y1, a1, g1 = _grads(fused, x, alpha)
    torch.testing.assert_close(y1, y0, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(a1, a0, rtol=1e-9, atol=1e-10)  # architecture gradients
    mapping = param_mapping(plain, fused)
    assert {p for p, _, _ in mapping} == {n for n, _ in plain.named_parameters()}
    assert {f for _, f, _ in mapping} == {n for n, _ in fused.named_parameters()}
    for pname, fname, sl in mapping:  # weight gradients, through the parameter mapping
        gf = g1[fname] if sl is None else g1[fname][sl]
        torch.testing.assert_close(gf, g0[pname], rtol=1e-9, atol=1e-10, msg=lambda m: f"{pname}: {m}")


def test_fused_float32_tolerance_and_state_roundtrip():
    sp, plain, fused = _pair(dtype=torch.float32, mode="embed", C=8)
    alpha = (1e-3 * torch.randn(6, 5, generator=torch.Generator().manual_seed(2))).requires_grad_()
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y0, a0, _ = _grads(plain, x, alpha)
    y1, a1, _ = _grads(fused, x, alpha)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a1, a0, rtol=1e-3, atol=1e-6)
    state = plain_state_from_fused(plain, fused)
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(state[k], v)


def _search_pair(**trainer):
    """Two tiny searches with the same seed, plain and fused; the fused one starts from the same weights."""
    r = tiny_recipe(trainer={**tiny_recipe()["trainer"], **trainer})
    plain = build_tiny_search(r)
    fused = build_tiny_search(tiny_recipe(trainer={**r["trainer"], "fused_cells": True}))
    return plain, fused


def test_fused_search_steps_match_plain_search():
    plain, fused = _search_pair(deterministic=True)
    for s in (plain, fused):
        s.model.double()
        s._epoch_sums = {}
        for k in s.alphas:
            s.alphas[k].data = s.alphas[k].data.double()
        s.a_optimizer = torch.optim.Adam(s.alphas.parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        s.train_loader.mean, s.train_loader.std = s.train_loader.mean.double(), s.train_loader.std.double()
        s.valid_loader.mean, s.valid_loader.std = s.valid_loader.mean.double(), s.valid_loader.std.double()
    for step in range(3):
        plain._one_step(0, step)
        fused._one_step(0, step)
    torch.testing.assert_close(fused.alphas["normal"], plain.alphas["normal"], rtol=1e-7, atol=1e-10)
    state = plain_state_from_fused(plain.model, fused.model)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(state[k], v, rtol=1e-6, atol=1e-9, msg=lambda m: f"{k}: {m}")


def test_fused_tiny_run_with_speed_switches(tmp_path):
    s, summary = run_tiny(tiny_recipe(trainer={**tiny_recipe()["trainer"], "fused_cells": True, "channels_last": True}),
                          out_dir=tmp_path / "run")
    assert isinstance(s.model, FusedNB201Network)
    assert summary["epochs_run"] == 2 and summary["genotype"]
    assert (tmp_path / "run").exists()


@pytest.mark.parametrize("trainer", [{"autocast": "bf16"}, {"channels_last": True}, {"autocast": "bf16", "fused_cells": True}])
def test_existing_speed_switches_run(trainer):
    s, summary = run_tiny(tiny_recipe(trainer={**tiny_recipe()["trainer"], "epochs": 1, **trainer}))
    assert summary["epochs_run"] == 1
    assert all(torch.isfinite(a).all() for a in s.alphas.values())


def _refusal(recipe):
    with pytest.raises(RecipeError) as exc:
        build_tiny_search(recipe)
    assert "trainer.fused_cells" in str(exc.value)
    return str(exc.value)


def test_refuses_gdas_active_mask():
    msg = _refusal(tiny_recipe(relaxation={"name": "gumbel_softmax"}, trainer={**tiny_recipe()["trainer"], "fused_cells": True}))
    assert "active" in msg


def test_refuses_active_mask_at_forward():
    _, _, fused = _pair()
    w = torch.softmax(torch.zeros(6, 5, dtype=torch.float64), -1)
    with pytest.raises(RecipeError, match="trainer.fused_cells"):
        fused(torch.zeros(2, 3, 8, 8, dtype=torch.float64), {"normal": OpWeights(w, active=w > 0)})


def test_refuses_supernet_modified_by_a_regulariser():
    msg = _refusal(tiny_recipe(regularisers=[{"name": "darts_minus_skip"}],
                               trainer={**tiny_recipe()["trainer"], "fused_cells": True}))
    assert "per-edge" in msg


def test_refuses_other_search_spaces():
    r = tiny_recipe(search_space={"name": "lhd", "params": {"C": 4, "layers": 3, "steps": 2}},
                    relaxation={"name": "node_softmax"}, discretiser={"name": "lhd_base"},
                    trainer={**tiny_recipe()["trainer"], "fused_cells": True})
    msg = _refusal(r)
    assert "search space 'lhd' offers no fused supernet" in msg


def test_refuses_none_only_ops():
    _refusal(tiny_recipe(search_space={"name": "nb201", "params": {"C": 4, "N": 1, "ops": ["none"]}},
                         trainer={**tiny_recipe()["trainer"], "fused_cells": True}))


def test_default_is_off():
    s = build_tiny_search()
    assert not isinstance(s.model, FusedNB201Network)
