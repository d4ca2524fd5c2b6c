"""tools/gpu_session.sh: the one prepared GPU command, dry-run on the CPU at tiny sizes (DRY_RUN=1):
every phase (a real population included), the checks that make a failing phase fail the command,
the resumable search carried from one call to the next, the one results file and the tables that
tools/gpu_tables.py makes from it (labelled as a CPU dry run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_session.sh"
sys.path.insert(0, str(ROOT / "tools"))


def _run(out: Path, work: Path, *phases: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(out), "WORK": str(work), "DRY_RUN": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **env}
    return subprocess.run(["bash", str(SCRIPT), *phases], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)


def test_refuses_phase_lists_over_eight_files_and_unknown_phases(tmp_path):
    res = _run(tmp_path / "out", tmp_path / "w", "setup", "benchh")
    assert res.returncode == 2 and "unknown phase 'benchh'" in res.stderr
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


def test_without_a_gpu_the_command_fails_naming_the_phase(tmp_path):
    """Not a dry run, on a CPU: setup fails ("no GPU visible"), the other phases are not run, the
    command exits 1 naming them, and results.json says so."""
    import gpu_pack

    gpu_pack.build(ROOT / "src/diffnas/data/embedded/cifar10_sample.npz", tmp_path / "data", 20, 10)
    res = _run(tmp_path / "out", tmp_path / "w", "setup", "bench", timeout=90, DRY_RUN="0",
               DIFFNAS_DATA_ROOT=str(tmp_path / "data"))
    log = (tmp_path / "out" / "log.txt").read_text()
    assert res.returncode == 1, log
    assert "no GPU visible" in log and "FAILED phase(s): setup bench" in log
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert r["failed"] == ["setup", "bench"] and r["phases"]["bench"]["status"] == "not_run"
    assert not r["dry_run"] and r["label"] == "GPU"


def test_a_phase_cut_by_the_deadline_fails_the_command(tmp_path):
    """A 6 s deadline leaves the bench phase no time after the setup: it is reported as cut and the
    command exits 1, in time, with its log and results file."""
    t0 = time.monotonic()
    res = _run(tmp_path / "out", tmp_path / "w", "setup", "bench", DEADLINE_S="6", RESERVE_S="2")
    assert time.monotonic() - t0 < 6 + 20
    log = (tmp_path / "out" / "log.txt").read_text()
    assert res.returncode == 1, log
    assert "bench: no time left for:" in log and "FAILED phase(s): bench" in log
    assert json.loads((tmp_path / "out" / "results.json").read_text())["phases"]["bench"]["status"] == "timeout"


def test_dry_run_every_phase_then_the_search_continues_from_the_carried_checkpoint(tmp_path):
    """The default phases on the CPU: population (K = 1, 2: a real population) against a plain and a
    fused run; bench; the collapse study's slice with seeds 0, 1 (14 runs: 5 populations of 2, GDAS and
    the degeneracy correction refused and run one by one); the full search, cut by its budget with a
    checkpoint that comes back (SLICE_EPOCHS: after 2 epochs, not after a time). A second call, with that tarball carried (CARRY_DIR) and the machine's
    own copy gone, continues it from its global step. Then the tables, labelled CPU dry run."""
    out1, work = tmp_path / "out1", tmp_path / "w"
    res = _run(out1, work, timeout=150, SEARCH_EPOCHS="1000", SLICE_EPOCHS="2")
    log = (out1 / "log.txt").read_text()
    assert res.returncode == 0, log[-3000:] + res.stderr[-2000:]
    r = json.loads((out1 / "results.json").read_text())
    assert r["dry_run"] and "CPU dry run" in r["label"] and r["device"]["kind"] == "cpu" and r["failed"] == []
    assert [(n, e["status"]) for n, e in r["phases"].items()] == [
        ("setup", "ok"), ("population", "ok"), ("bench", "ok"), ("collapse", "ok"), ("search", "partial")]
    pop = r["phases"]["population"]["result"]["rows"]
    assert set(pop) == {"single", "single-fused", "K=1", "K=2"}
    assert pop["K=2"]["ops_per_member"] < pop["single"]["ops_per_member"]  # one op for both members
    assert pop["K=2"]["ratio_vs_fused"] > 0
    bench = r["phases"]["bench"]["result"]
    assert {(x["config"], x["impl"]) for x in bench["results"]} >= {
        ("nb201-darts", "diffnas"), ("nb201-darts", "diffnas-fused"), ("darts-darts", "diffnas-fused")}
    col = r["phases"]["collapse"]["result"]
    # GDAS is refused (host-side op sampling); the degeneracy regularisers only build masks (modifies_supernet False)
    assert len(col["runs"]) == 14 and len(col["populations"]) == 6 and len(col["refused"]) == 1
    assert sorted(g[0] for g in col["populations"])[0] == "darts_v1-seed0"
    assert col["projected_full_study_s"] > 0
    s1 = r["phases"]["search"]["result"]
    assert not s1["finished"] and s1["global_step_before"] == 0 and s1["global_step_after"] >= 2 * 4  # 2 epochs of 4
    assert (out1 / "bench.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in out1.iterdir()) == ["bench.png", "log.txt", "results.json", "search_run.tar.gz"]
    with tarfile.open(out1 / "search_run.tar.gz") as t:
        assert "nb201_darts_v1/checkpoint.pt" in t.getnames()

    # the next call: the checkpoint carried in, the machine's own run gone (a fresh machine)
    carry = tmp_path / "gpu_carry"
    carry.mkdir()
    shutil.copy(out1 / "search_run.tar.gz", carry)
    shutil.rmtree(work / "search")
    out2 = tmp_path / "out2"
    res = _run(out2, work, "search", timeout=60, CARRY_DIR=str(carry), SLICE_EPOCHS="1")
    log2 = (out2 / "log.txt").read_text()
    assert res.returncode == 0, log2[-3000:]
    assert "continuing from the carried checkpoint" in log2
    s2 = json.loads((out2 / "results.json").read_text())["phases"]["search"]["result"]
    # one more epoch (SLICE_EPOCHS=1): to the end of the epoch the carried checkpoint stands in (the first
    # slice's SIGINT lands when the 1 s poll sees its epochs done, which on a fast machine is mid-epoch)
    assert s2["global_step_before"] == s1["global_step_after"]
    assert s2["global_step_after"] >= (s1["global_step_after"] // 4 + 1) * 4

    # the tables from the dry run's file: labelled as a CPU dry run, written only where asked
    import gpu_tables

    tables = gpu_tables.gpu_tables(r)
    assert all("CPU dry run" in lines[0] and "not GPU figures" in lines[0] for lines in tables.values())
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- tables:begin gpu-bench -->\nold\n<!-- tables:end gpu-bench -->\nafter\n")
    assert gpu_tables.main(["--gpu", str(out1 / "results.json"), "--write", "--files", str(readme)]) == 0
    text = readme.read_text()
    assert "old" not in text and "| nb201-darts | diffnas-fused |" in text and text.endswith("after\n")
    assert gpu_tables.main(["--gpu", str(out1 / "results.json"), "--write"]) == 2  # never into our own READMEs


def test_compact_pack_and_carry_budget(tmp_path, capsys):
    import gpu_pack
    import numpy as np

    dest = gpu_pack.build(ROOT / "src/diffnas/data/embedded/cifar10_sample.npz", tmp_path, 100, 20)
    z = np.load(dest)
    assert np.bincount(z["y_train"]).tolist() == [10] * 10 and len(z["test_offsets"]) == 21
    (tmp_path / "big").write_bytes(b"\0" * (2 * 2**20))
    assert gpu_pack.carry(ROOT, [str(tmp_path / "big")], budget=64) > 2
    try:
        gpu_pack.carry(ROOT, [str(tmp_path / "big")], budget=1)
        raise AssertionError("over budget, accepted")
    except SystemExit as exc:
        assert exc.code == 1
    assert "over 1 MiB" in capsys.readouterr().err


def test_cpu_tables_from_result_files(tmp_path):
    """The CPU tables come from committed result files; an absent one says it is to be re-measured."""
    import gpu_tables

    t = gpu_tables.cpu_tables(tmp_path)
    assert all("To be re-measured on an idle machine" in v[0] for v in t.values())
    pop = {"device": "cpu", "torch": "x", "threads": 1, "loadavg": [3.5, 3.0, 2.0], "pop_switches": [], "pop_refused": None,
           "settings": {"C": 8, "N": 1, "batch": 16, "image_size": 16, "order": 1, "rounds": 5, "steps": 2},
           "rows": {"single": {"K": 1, "ops_per_member": 1783.0, "view_ops_per_member": 277.0, "steps_per_s_median": 2.0,
                               "steps_per_s_min": 1.5, "steps_per_s_max": 2.5, "aggregate_median": 2.0,
                               "ratio_vs_single": 1.0, "ratio_vs_fused": None}}}
    (tmp_path / "population_speed_cpu.json").write_text(json.dumps(pop))
    lines = gpu_tables.cpu_tables(tmp_path)["cpu-population"]
    assert "not an idle machine" in lines[0]  # load 3.5 on 1 thread
    assert "| single | 1,783 | 277 | 2.000 (1.500–2.500) | 2.000 | 1.00× | – | – |" in lines
