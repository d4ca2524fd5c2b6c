"""Temperature schedules (pcd_tau, edd_tau, mixed_sparsity_tau): values by hand, state, tiny runs."""

import math
from types import SimpleNamespace

import pytest
import torch

from diffnas.plugins.schedules.temperature import EDDTau, MixedSparsityTau, PCDTau
from diffnas.testing import run_tiny, tiny_recipe


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: one intra-op thread avoids OpenMP spin-waiting on a shared, loaded CPU (20x here)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

# τ_k = 0.000399 / ln(1 + 0.11·k), computed by hand
TAU_PCD = {1: 3.8233034e-3, 2: 2.0065289e-3, 4: 1.0942206e-3, 5: 9.1042900e-4, 10: 5.3778126e-4}


@pytest.mark.parametrize("epoch,expected", [
    (0, 1.0), (4, 1.0),              # warm-up (5 epochs)
    (5, TAU_PCD[5]),                 # L[5] = τ_5 (the bottom of the cycle)
    (6, TAU_PCD[4]),                 # L[6] = τ_4 (on the way back up)
    (10, 1.0),                       # L[0] = 1 (a new cycle)
    (12, TAU_PCD[2]), (19, TAU_PCD[1]),
    (40, TAU_PCD[1]), (44, TAU_PCD[5]), (49, TAU_PCD[10]),  # monotone phase τ_{(e mod 10)+1}
])
def test_pcd_values(epoch, expected):
    assert PCDTau().value(None, epoch, 0) == pytest.approx(expected, rel=1e-6)


def test_pcd_cycle_list_and_validation():
    lst = PCDTau().cyclic_list()
    assert len(lst) == 10
    assert lst[0] == 1.0 and lst[1:6] == pytest.approx([TAU_PCD[1], TAU_PCD[2], 0.000399 / math.log(1.33), TAU_PCD[4], TAU_PCD[5]])
    assert lst[6:] == lst[4:0:-1]
    with pytest.raises(ValueError, match="even"):
        PCDTau.Config(cycle=9)


def _fake_search(alpha):
    return SimpleNamespace(alphas={"normal": alpha})


def test_edd_values_by_hand():
    # uniform α on 6 edges × 5 ops: H = 6·ln 5 = 9.6566275 whatever τ is. Default warm-up 10 epochs on
    # NB201, CIFAR-10 and -100 alike (AutoDL-Projects_edd DARTS-V1-10.py and -100.py: warmup=10).
    sched = EDDTau()
    search = _fake_search(torch.zeros(6, 5))
    taus = [sched.value(search, e, 0) for e in range(50)]
    assert taus[:10] == [1.0] * 10  # τ = 1 through epoch 9
    # epoch 10 = warm-up: s = 0.5·0.04·H = 0.1931325, τ = 0.000399/ln(1 + s·1); held until epoch 15
    assert taus[10:15] == pytest.approx([2.2595703e-3] * 5, rel=1e-6)
    # epoch 15: s = 0.5·0.04·H + 0.5·0.1931325 = 0.2896988, τ = 0.000399/ln(1 + 2s)
    assert taus[15] == pytest.approx(8.7300217e-4, rel=1e-6)
    assert taus[20] == pytest.approx(5.6992190e-4, rel=1e-6) and taus[35] == pytest.approx(3.3578410e-4, rel=1e-6)
    # epoch 40: c = 0.08 and an update every epoch: s = 0.5·0.08·H + 0.5·s_35 = 0.5763800, τ = m/ln(1 + 7s)
    assert taus[40] == pytest.approx(2.4685310e-4, rel=1e-6) and taus[41] == pytest.approx(2.1502287e-4, rel=1e-6)
    assert taus[49] == pytest.approx(1.5394454e-4, rel=1e-6)
    assert sched.k == 17  # k₀ = 1 and 16 updates: epochs 10, 15, …, 35 and 40…49
    changes = [e for e in range(1, 50) if taus[e] != taus[e - 1]]
    assert changes == [10, 15, 20, 25, 30, 35] + list(range(40, 50))
    assert sched.is_update_epoch(41) and not sched.is_update_epoch(11) and not sched.is_update_epoch(5)


def test_edd_entropy_uses_previous_tau_and_mean_reduce():
    alpha = torch.tensor([[0.0, math.log(3.0)]])  # softmax(α/1) = [0.25, 0.75]
    sched = EDDTau(EDDTau.Config(warmup=0, reduce="mean"))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert sched.entropy(_fake_search(alpha)) == pytest.approx(h)
    sched.value(_fake_search(alpha), 0, 0)
    assert sched.s == pytest.approx(0.5 * 0.04 * h)
    # τ is now tiny: softmax(α/τ) is one-hot, so the entropy reads ≈ 0
    assert sched.entropy(_fake_search(alpha)) == pytest.approx(0.0, abs=1e-9)


def test_edd_state_roundtrip_no_double_update():
    search = _fake_search(torch.zeros(6, 5))
    a = EDDTau()
    for e in range(11):
        a.value(search, e, 0)
    b = EDDTau()
    b.load_state_dict(a.state_dict())
    assert (b.s, b.k, b.tau, b.last_epoch) == (a.s, a.k, a.tau, a.last_epoch)
    # a resumed epoch fires epoch_start again: no second update
    assert b.value(search, 10, 0) == a.tau and b.k == a.k


def _ms_search(steps=8, epochs=5, seed=3):
    return SimpleNamespace(steps_per_epoch=steps, epochs=epochs, recipe=SimpleNamespace(trainer=SimpleNamespace(seed=seed)))


def test_mixed_sparsity_values_and_draws():
    sched = MixedSparsityTau()
    search = _ms_search()
    assert sched.value(search, 0, 0) == 10.0  # warm-up τ
    # E = 5, warm-up 1: C_1 = 1/4, C_4 = 1
    assert sched.c_e(1, 5) == 0.25 and sched.c_e(4, 5) == 1.0 and sched.c_e(0, 5) == 0.0
    got = [sched.value(search, 1, s) for s in range(8)]
    draws = torch.rand(8, generator=torch.Generator().manual_seed(3)) < 0.25
    assert got == [1e-3 if d else 1e-2 for d in draws.tolist()]
    assert [sched.value(search, 4, s) for s in range(8)] == [1e-3] * 8


def test_mixed_sparsity_checkpoint_resumes_identically():
    search = _ms_search(steps=16, epochs=6)
    a = MixedSparsityTau(MixedSparsityTau.Config(seed=11))
    for s in range(16):
        a.value(search, 1, s)
    a.value(search, 2, 0)
    b = MixedSparsityTau(MixedSparsityTau.Config(seed=11))
    b.load_state_dict(a.state_dict())
    # mid-epoch resume: same draws for the rest of epoch 2, and the same next epoch
    assert [b.value(search, 2, s) for s in range(1, 16)] == [a.value(search, 2, s) for s in range(1, 16)]
    assert [b.value(search, 3, s) for s in range(16)] == [a.value(search, 3, s) for s in range(16)]


def _tau_history(summary_search):
    return [r["hparams"]["relaxation"]["tau"] for r in summary_search.state.history]


def test_tiny_run_pcd_and_edd():
    s, summary = run_tiny(tiny_recipe(relaxation={"name": "sparse_noisy_softmax"},
                                      trainer={"epochs": 3, "steps_per_epoch": 1},
                                      schedules=[{"name": "pcd_tau", "params": {"warmup": 1}}]))
    assert _tau_history(s) == pytest.approx([1.0, PCDTau().cyclic_list()[1], PCDTau().cyclic_list()[2]])
    assert all(math.isfinite(r["train_loss"]) for r in s.state.history)
    s, _ = run_tiny(tiny_recipe(relaxation={"name": "sparse_noisy_softmax"}, trainer={"steps_per_epoch": 1},
                                schedules=[{"name": "edd_tau", "params": {"warmup": 0, "interval": 1}}]))
    taus = _tau_history(s)
    assert all(math.isfinite(t) and 0 < t < 0.01 for t in taus) and taus[1] < taus[0]
    assert s.schedules[0].k == 3


def test_tiny_run_mixed_sparsity():
    s, _ = run_tiny(tiny_recipe(trainer={"epochs": 2, "steps_per_epoch": 2},
                                schedules=[{"name": "mixed_sparsity_tau", "params": {"seed": 0}}]))
    hist = s.state.history
    assert hist[0]["hparams"]["relaxation"]["tau"] == 10.0
    assert hist[1]["hparams"]["relaxation"]["tau"] == pytest.approx(1e-3)  # C = 1 at the last epoch
    assert all(math.isfinite(r["train_loss"]) for r in hist)
