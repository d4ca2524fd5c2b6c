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
    code = compile(_readme_block("Python API"), "README.md", "exec")
    for attempt in range(2):  # a notebook re-runs its cells: the second run replaces the first (overwrite=True)
        ns: dict = {}
        exec(code, ns)
        assert "DARTS-V2: 92.91 %" in capsys.readouterr().out, attempt
    run, summary = ns["run"], ns["summary"]
    assert not list((offline / "runs" / "notebook").glob(".replaced-*"))  # the replaced run is gone once the new one checkpointed
    assert run.finished and run.column("epoch") == [0, 1] and len(run.column("valid_acc")) == 2
    assert run.result["genotype"] == summary["genotype"] == str(run.genotype)
    assert all(0.0 <= v <= 100.0 for v in run.column("valid_acc"))
    assert (offline / "runs" / "notebook" / "entropy.png").stat().st_size > 1000


def _readme_shell_examples() -> list[tuple[str, list[str]]]:
    """Every ``$ diffnas ...`` line of the README's text blocks with the output lines printed under it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    out: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```text\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif out:
                out[-1][1].append(line)
    return out


def _shape(line: str) -> str:
    """A printed line's label (up to its first ':') with every number a wildcard: what a shorter run prints too."""
    label = re.escape(line.split(":")[0] + (":" if ":" in line else ""))
    return re.sub(r"\d+", r"\\d+", label)


def test_every_readme_shell_example_runs_as_printed(offline, capsys):
    """Each ``$ diffnas`` line of the README runs offline and prints what the README shows under it. The
    quickstart search alone is shortened (1 epoch of 2 steps: its full minute is the quickstart test's
    business), so its numbers differ and only the labels of its lines are compared, and so are those
    of ``diffnas show`` of it (the rows of its step table are the full run's: tests/test_quickstart.py
    compares them line for line)."""
    pytest.importorskip("onnxruntime", reason="the README scores DARTS-V2 with the NB301 surrogate: pip install diffnas[surrogate]")
    import shlex

    from diffnas.cli import main

    (offline / "examples").symlink_to(ROOT / "examples")
    examples = _readme_shell_examples()
    assert [shlex.split(c, comments=True)[1] for c, _ in examples] == ["search", "show", "score"]
    for command, printed in examples:
        argv = shlex.split(command, comments=True)
        assert argv[0] == "diffnas", command
        shortened = argv[1] in ("search", "show")  # the search, and the show of its run
        if argv[1] == "search":
            argv += ["--set", "trainer.epochs=1", "--set", "trainer.steps_per_epoch=2", "--no-progress"]
        assert main(argv[1:]) == 0, command
        got = capsys.readouterr().out.splitlines()
        for line in printed:
            if line.strip() == "..." or (shortened and re.match(r"\s+\d", line)):
                continue  # an excerpt's elision; a table row of the full run
            if shortened:
                assert any(re.match(_shape(line), g) for g in got), (command, line, got)
            else:
                assert line in got, (command, line, got)


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


def test_run_column_refuses_an_unknown_key_naming_the_known_ones(tmp_path):
    from diffnas import api
    from diffnas.core.errors import DiffnasError
    from diffnas.testing import run_tiny, tiny_recipe

    run_tiny(tiny_recipe(), out_dir=tmp_path / "run")
    run = api.load_run(tmp_path / "run")
    assert "entropy.normal" in run.columns() and "valid_acc" in run.columns() and "scores.nb201.cifar10_test" in run.columns()
    assert len(run.column("entropy.normal")) == 2 and all(v > 0 for v in run.column("entropy.normal"))
    with pytest.raises(DiffnasError) as exc:
        run.column("valid_ac")
    msg = str(exc.value)
    assert "'valid_ac'" in msg and "did you mean 'valid_acc'?" in msg and "entropy.normal" in msg and "train_loss" in msg
