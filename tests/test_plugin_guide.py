"""docs/plugins.md and its package (tests/guide_plugin): the package installs with pip, diffnas finds
it through its entry point, a recipe naming one component of every kind runs through the CLI, the
package's own tests pass, and every code block of the guide is a verbatim excerpt of the package."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import diffnas
from diffnas.core.engine import Search
from diffnas.testing import build_tiny_search

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "tests" / "guide_plugin"
DOC = ROOT / "docs" / "plugins.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def doc_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text(encoding="utf-8"))]


def test_every_code_block_is_quoted_from_the_guide_package():
    blocks = doc_blocks()
    quoted = 0
    for lang, body in blocks:
        first, _, rest = body.partition("\n")
        if lang == "bash":  # commands, run by test_installed_guide_runs_by_recipe
            continue
        assert first.startswith("# tests/guide_plugin/"), f"a {lang} block names no file of the guide package:\n{body}"
        path = ROOT / first[2:].strip()
        assert rest.strip() and rest in path.read_text(encoding="utf-8"), f"block not found verbatim in {path}:\n{rest}"
        quoted += 1
    assert quoted >= 15  # one block per kind at least, plus packaging, recipe and tests


def test_documented_search_surface_matches_the_engine():
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- search-api:", 1)[1].split("\n\n", 1)[0]
    names = [re.match(r"`(\w+)", row.split("|")[1].strip()).group(1) for row in table.splitlines()[3:]]
    assert names == list(Search.PUBLIC_API)
    search = build_tiny_search()
    assert [n for n in names if not hasattr(search, n)] == []
    for name in Search.PUBLIC_API:  # and the engine's docstring lists each one
        assert f"``{name}" in Search.__doc__, name


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The guide package pip-installed into a temporary target (built from a copy, so the source
    tree gets no build files); the environment of a subprocess that sees it and this diffnas."""
    tmp = tmp_path_factory.mktemp("guide")
    src = tmp / "src"
    shutil.copytree(GUIDE, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--no-input", "--target", str(target), str(src)],
                   check=True, capture_output=True, timeout=300)
    env = dict(os.environ)
    env.pop("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("DIFFNAS_LOAD_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(Path(diffnas.__file__).parents[1])])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(env: dict[str, str], *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_installed_guide_runs_by_recipe(installed, tmp_path):
    listing = json.loads(_run(installed, "-m", "diffnas.cli", "plugins", "--json").stdout)
    chain = next(e for e in listing["components"]["search_space"] if e["name"] == "chain")
    assert chain["plugin"] == "guide" and chain["help"].startswith("A dense one-input cell")
    assert {"name": "guide", "version": "diffnas-guide-plugin 0.1.0"}.items() <= \
        next(p for p in listing["plugins"] if p["name"] == "guide").items()

    recipe = GUIDE / "recipe.yaml"
    too_new = tmp_path / "too_new.yaml"  # the same recipe, requiring a version that is not installed
    too_new.write_text(recipe.read_text().replace("diffnas-guide-plugin>=0.1", "diffnas-guide-plugin>=9"))
    checked = _run(installed, "-m", "diffnas.cli", "validate", str(recipe), str(too_new))
    assert checked.returncode == 2 and "Traceback" not in checked.stderr
    assert f"{recipe}: ok (chain / softplus_simplex / weights_first" in checked.stdout, checked.stderr
    assert (f"invalid recipe {too_new}: 1 problem(s)\n  the recipe requires diffnas-guide-plugin>=9, but "
            "diffnas-guide-plugin 0.1.0 is installed @ recipe.requires[0]") in checked.stderr

    run = tmp_path / "run"
    done = _run(installed, "-m", "diffnas.cli", "search", str(recipe), "--out", str(run), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "chain: {\"conv_edges\":" in done.stdout and "stopped early" not in done.stdout
    prov = json.loads((run / "provenance.json").read_text())
    for key, name in [("search_space", "chain"), ("relaxation", "softplus_simplex"), ("update_rule", "weights_first"),
                      ("regularisers.2", "csv_log"), ("schedules.0", "step_decay"), ("discretiser", "strongest_op"),
                      ("data", "stripes")]:
        assert prov[key]["name"] == name and prov[key]["plugin"] == "guide"
        assert (prov[key]["distribution"], prov[key]["version"]) == ("diffnas-guide-plugin", "0.1.0")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["hparams"]["relaxation"]["tau"] for m in metrics] == [1.0, 0.5, 0.25]  # step_decay, gamma 0.5
    assert (run / "guide_log.csv").read_text().count("\n") == 1 + len(metrics)


def test_the_guide_package_tests_pass(installed):
    out = _run(installed, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(GUIDE / "tests"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert re.search(r"\b8 passed\b", out.stdout), out.stdout[-500:]
