"""Everyday use on a fresh, offline machine: the README's Python API session, the quickstart and
``diffnas score`` of DARTS-V2 with no data root, the light pytest plugin, what the package ships."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _offline_env(tmp_path):
    """No data root and an empty home (so no ~/.cache/diffnas/data): only what the package embeds."""
    env = {k: v for k, v in os.environ.items() if k != "DIFFNAS_DATA_ROOT"}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]))
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """This process as a fresh offline machine: no data root, an empty home, nothing cached, cwd tmp_path."""
    from diffnas.benchmarks import nb201, nb301

    monkeypatch.delenv("DIFFNAS_DATA_ROOT", raising=False)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for cached in (nb201.load_table, nb301._load):
        cached.cache_clear()
    yield tmp_path
    for cached in (nb201.load_table, nb301._load):
        cached.cache_clear()
    assert not (tmp_path / "home" / ".cache" / "diffnas").exists()  # the package's own data, nothing fetched


def _readme_block(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index(f"## {title}"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_session_runs_offline(offline, capsys):
    pytest.importorskip("onnxruntime", reason="the README session scores DARTS-V2 with the NB301 surrogate: "
                        "pip install diffnas[surrogate]")
    import matplotlib

    matplotlib.use("Agg")
    (offline / "examples").symlink_to(ROOT / "examples")
    ns: dict = {}
    exec(compile(_readme_block("Python API"), "README.md", "exec"), ns)
    run, summary = ns["run"], ns["summary"]
    assert "DARTS-V2: 92.91 %" in capsys.readouterr().out
    assert run.finished and run.column("epoch") == [0, 1] and len(run.column("valid_acc")) == 2
    assert run.result["genotype"] == summary["genotype"] == str(run.genotype)
    assert all(0.0 <= v <= 100.0 for v in run.column("valid_acc"))
    assert (offline / "runs" / "notebook" / "entropy.png").stat().st_size > 1000


def test_quickstart_and_score_on_a_fresh_offline_machine(offline, capsys):
    pytest.importorskip("onnxruntime", reason="diffnas score of a DARTS genotype needs pip install diffnas[surrogate]")
    from diffnas.cli import main

    assert main(["search", str(ROOT / "examples/recipes/quickstart.yaml"), "--out", "runs/quickstart",
                 "--set", "trainer.epochs=1", "--set", "trainer.steps_per_epoch=2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^nb201 #\d+ test accuracy .* cifar10 \d+\.\d\d ", out, re.M) and "genotype: |" in out
    darts_v2 = re.search(r'darts_v2 = \((.*?)\)\n', _readme_block("Python API"), re.S).group(1)
    darts_v2 = "".join(re.findall(r'"([^"]*)"', darts_v2))
    assert main(["score", darts_v2]) == 0
    assert "nb301 surrogate: predicted CIFAR-10 val accuracy 92.91% (epoch 98)" in capsys.readouterr().out


def test_pytest_plugin_does_not_import_torch(tmp_path):
    code = ("import sys, diffnas.testing.pytest_plugin, diffnas\n"
            "print(sorted(m for m in ('torch', 'networkx', 'matplotlib', 'diffnas.registry') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], env=_offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_package_ships_licence_types_and_embedded_data():
    import tomllib

    from diffnas.benchmarks import nb301

    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert (SRC / "diffnas" / "py.typed").exists() and (SRC / "diffnas" / "__main__.py").exists()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = project["tool"]["setuptools"]["package-data"]["diffnas"]
    assert "py.typed" in data and "data/embedded/nb301_surrogate/*" in data
    assert project["project"]["license"] == {"text": "MIT"}
    assert set(project["project"]["optional-dependencies"]) >= {"surrogate", "tensorboard", "test"}
    emb = nb301.embedded_path(nb301.SUBDIR)
    assert {p.name for p in emb.iterdir()} == {"model_v2.onnx", "encoding_v2.json", "LICENSE-2.0.txt"}
    assert "Apache License" in (emb / "LICENSE-2.0.txt").read_text()
    assert "nb301_surrogate/LICENSE-2.0.txt" in (emb.parent / "NOTICE").read_text()
