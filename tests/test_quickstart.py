"""The README quickstart on a fresh offline machine (the embedded CIFAR-10 sample): with 1 and with 2
CPU threads it finds the same cell, by a margin far above the float noise between the two, and
prints what the README's transcript shows (genotype and score lines); ``diffnas show`` prints the
step records. Two full quickstart runs: about two minutes on two cores."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_everyday import ROOT, _offline_env

#: print the thread count torch runs with, then the CLI (so the test sees OMP_NUM_THREADS honoured)
RUN = ("import sys, torch; print('torch threads:', torch.get_num_threads(), flush=True); "
       "from diffnas.cli import main; sys.exit(main(sys.argv[1:]))")

#: op-weight margin the chosen op must lead the runner-up by, on every edge (uniform: 0.2 each)
MIN_MARGIN = 0.02


def _quickstart(tmp_path: Path, threads: int) -> tuple[str, Path]:
    env = _offline_env(tmp_path)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = tmp_path / f"qs{threads}"
    r = subprocess.run([sys.executable, "-c", RUN, "search", str(ROOT / "examples/recipes/quickstart.yaml"),
                        "--out", str(out), "--no-progress"], env=env, cwd=tmp_path, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    assert f"torch threads: {threads}\n" in r.stdout
    return r.stdout, out


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if re.match(r"^(nb201 #\d+ test accuracy|genotype: )", ln)]


def _margins(run: Path) -> list[float]:
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    return [sorted(row)[-1] - sorted(row)[-2] for row in last["alphas"]["normal"]]


@pytest.mark.slow
def test_quickstart_same_cell_with_1_and_2_threads_and_as_the_readme_shows(tmp_path):
    one, run1 = _quickstart(tmp_path, 1)
    two, run2 = _quickstart(tmp_path, 2)
    assert len(_lines(one)) == 2 and _lines(one) == _lines(two)
    # the README transcript is this run's output
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    transcript = readme[readme.index("## Quickstart"):readme.index("## Python API")]
    assert _lines(transcript) == _lines(one)
    # decisive: every edge's chosen op leads by far more than the two thread counts differ
    m1, m2 = _margins(run1), _margins(run2)
    probs = [json.loads(x)["alphas"]["normal"] for r in (run1, run2) for x in (r / "metrics.jsonl").read_text().splitlines()[-1:]]
    noise = max(abs(a - b) for ra, rb in zip(*probs) for a, b in zip(ra, rb))
    assert min(m1) > MIN_MARGIN and min(m2) > MIN_MARGIN, (m1, m2)
    assert noise < min(m1) / 10, (noise, m1)
    # the effect the project studies, over steps: diffnas show prints the step records
    from diffnas import api

    steps = api.load_run(run1)
    assert steps.step_column("global_step")[0] == 0 and len(steps.steps) > 5
    assert steps.step_column("parameter_free_share.normal")[0] == pytest.approx(0.6, abs=2e-3)
    show = subprocess.run([sys.executable, "-m", "diffnas.cli", "show", str(run1)], env=_offline_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr
    assert "step records:" in show.stdout and "param-free share normal" in show.stdout
