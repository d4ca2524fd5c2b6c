"""tools/gpu_session.sh: the one prepared GPU command, dry-run on the CPU at tiny sizes (DRY_RUN=1),
with its per-phase budgets, its deadline and its limit of 8 files back under $OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_session.sh"


def _run(tmp_path: Path, *phases: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "DRY_RUN": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    return subprocess.run(["bash", str(SCRIPT), *phases], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def test_refuses_phase_lists_over_eight_files_and_unknown_phases(tmp_path):
    res = _run(tmp_path, "setup", "tests", "bench", "population", "bench_bf16", "train")
    assert res.returncode == 2 and "bring back 9 files" in res.stderr and "at most 8" in res.stderr
    res = _run(tmp_path, "setup", "benchh")
    assert res.returncode == 2 and "unknown phase 'benchh'" in res.stderr
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_dry_run_on_the_cpu_runs_every_default_phase_within_its_budgets(tmp_path):
    """The default phases at tiny sizes: the tests phase is given a 3 s budget (so it is cut, as a
    phase that overruns on the GPU would be), the population study a short one; the whole command
    ends within its deadline and brings back at most 8 files."""
    t0 = time.monotonic()
    res = _run(tmp_path, timeout=240, DEADLINE_S="200", BUDGET_tests="3", BUDGET_population="20")
    wall = time.monotonic() - t0
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    out = tmp_path / "out"
    log = (out / "log.txt").read_text()
    for phase in ("setup", "tests", "bench", "population"):
        assert f"phase {phase} (" in log
    assert "tests: no time left for: python3 -m pytest" in log
    assert "python" in (out / "env.txt").read_text() and "DRY_RUN=1" in (out / "env.txt").read_text()
    bench = json.loads((out / "bench.json").read_text())
    assert bench["environment"]["device"] == "cpu"
    assert {r["impl"] for r in bench["results"]} >= {"diffnas", "diffnas-fused"}
    assert all(len(r["rounds"]) == 2 for r in bench["results"])  # interleaved rounds
    assert {s["impl"] for s in bench["skipped"]} >= {"diffnas-graphs", "diffnas-fused-graphs"}
    assert (out / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert "population" in log and "done in" in log
    if (ROOT / "benchmarks" / "population_speed.py").exists():
        assert (out / "population.json").exists() or "population_speed" in log
    else:
        assert "population: benchmarks/population_speed.py is not in this tree; skipped" in log
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"log.txt", "env.txt", "bench.json", "bench.png"} <= set(files)
    assert wall < 200 + 20


def test_the_deadline_cuts_what_does_not_fit(tmp_path):
    """An 8 s deadline: the setup (importing torch) leaves the bench phase under 5 s after the packing
    reserve, so it is not started; the command still ends cleanly, in time, with its log."""
    t0 = time.monotonic()
    res = _run(tmp_path, "setup", "bench", timeout=60, DEADLINE_S="8", RESERVE_S="2")
    assert time.monotonic() - t0 < 8 + 20
    assert res.returncode == 0
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "bench: no time left for: python3 benchmarks/search_speed.py" in log and "done in" in log
    assert not (tmp_path / "out" / "bench.json").exists()
