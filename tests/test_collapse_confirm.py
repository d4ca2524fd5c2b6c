"""A tiny version of the confirmation study (issue 19) end to end: its own study file with the
shared reduction replaced by a seconds-long one (synthetic 8×8 data, two steps an epoch), the
warm-up stage run first, the eight arms forked from it, and the pre-registered analysis
(tools/collapse_confirm.py) run on what they wrote."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

from diffnas import study as S

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "examples" / "studies" / "collapse_confirm" / "collapse_confirm.yaml"


def _analysis():
    spec = importlib.util.spec_from_file_location("collapse_confirm", ROOT / "tools" / "collapse_confirm.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tiny_confirmation_study_forks_every_arm_from_the_warmup_and_is_analysed(tmp_path):
    doc = yaml.safe_load(STUDY.read_text())
    doc["set"].update({"data": {"dataset": "synthetic", "params": {"num_train": 64, "num_test": 16, "image_size": 8}},
                       "trainer.batch_size": 8, "trainer.steps_per_epoch": 2, "trainer.epochs": 2,
                       "diagnostics.every": 1, "diagnostics.iterations": 2})
    doc["warmup"]["set"].update({"trainer.epochs": 1, "trainer.warmup_epochs": 1})
    doc["executor"] = {"name": "sequential"}
    for entry in doc["runs"]:
        entry["recipe"] = str((STUDY.parent / entry["recipe"]).resolve())
    doc["warmup"]["recipe"] = str((STUDY.parent / doc["warmup"]["recipe"]).resolve())
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"
    ls, outcomes, _ = S.run_study(path, out, progress=False, report_plots=False, log=lambda m: None)
    assert [o.status for o in outcomes] == ["done"] * 24
    warm = (out / "warmup" / "checkpoint.pt").resolve()
    for spec in ls.specs:
        prov = json.loads((spec.out_dir / "provenance.json").read_text())
        assert prov["init_from"]["path"] == str(warm), spec.id
    mod = _analysis()
    runs = mod.collect(out)
    assert len(runs) == 24
    assert all(r["hessian_last"] is not None for r in runs.values())  # the eigenvalue is recorded
    H = mod.hypotheses(runs)
    assert [h["id"] for h in H] == [f"H{i}" for i in range(1, 11)]
    assert all(len(h["holds_per_seed"]) == 3 and h["verdict"] in ("confirmed", "refuted", "not shown") for h in H)
    mod.write(runs, H, tmp_path / "results")
    assert (tmp_path / "results" / "tables.md").read_text().count("| H") == 10
    for png in ("share_curves.png", "skip_curves.png", "hessian_curves.png"):
        assert (tmp_path / "results" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
