"""docs/plugins.md and its package (tests/guide_plugin): the package installs with pip, diffnas finds
it through its entry point, a recipe naming one component of every kind runs through the CLI and a
study through the package's executor, the package's own tests pass, every code block of the guide is
a verbatim excerpt of the package (with its file's imports), the hook table lists every hook, and the
API reference lists every public member of each kind's classes with its signature."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

import diffnas
from diffnas.core import hookspecs, protocols
from diffnas.core.engine import Search
from diffnas.testing import build_tiny_search

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "tests" / "guide_plugin"
DOC = ROOT / "docs" / "plugins.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)


def doc_blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(DOC.read_text(encoding="utf-8"))]


#: a line of its own in a code block: the file goes on here with lines the block leaves out
ELIDED = "# ...\n"


def test_every_code_block_is_quoted_from_the_guide_package():
    """Each block names its file on its first line; its parts (between ``# ...`` lines) are verbatim
    excerpts of that file, in the file's order. The first block quoting a Python file shows every
    top-level import of the file, so that no excerpt leaves a reader guessing where a name comes from."""
    blocks = doc_blocks()
    quoted, first_blocks = 0, {}
    for lang, body in blocks:
        first, _, rest = body.partition("\n")
        if lang == "bash":  # commands, run by test_installed_guide_runs_by_recipe
            continue
        assert first.startswith("# tests/guide_plugin/"), f"a {lang} block names no file of the guide package:\n{body}"
        path = ROOT / first[2:].strip()
        text, at = path.read_text(encoding="utf-8"), 0
        for part in rest.split(ELIDED):
            assert part.strip(), f"an empty excerpt of {path}:\n{rest}"
            found = text.find(part, at)
            assert found >= 0, f"block not found verbatim in {path} (after character {at}):\n{part}"
            at = found + len(part)
        first_blocks.setdefault(path, rest)
        quoted += 1
    assert quoted >= 20  # one block per kind at least, plus packaging, fast paths, recipe and tests
    for path, block in first_blocks.items():
        if path.suffix != ".py":
            continue
        text = path.read_text(encoding="utf-8")
        imports = [ast.get_source_segment(text, node) for node in ast.parse(text).body
                   if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom) and node.module != "__future__"]
        missing = [line for line in imports if line not in block]
        assert imports and not missing, f"the first block quoting {path.name} leaves out its imports {missing}"
    guide_modules = {p for p in (GUIDE / "src" / "diffnas_guide").glob("*.py") if p.name != "__init__.py"}
    assert guide_modules <= set(first_blocks), sorted(p.name for p in guide_modules - set(first_blocks))


def test_the_hook_table_lists_every_hook():
    table = DOC.read_text(encoding="utf-8").split("<!-- hooks:", 1)[1].split("\n\n", 1)[0]
    listed = set(re.findall(r"`(diffnas_\w+)", table))
    specs = {n for n, f in vars(hookspecs).items() if n.startswith("diffnas_") and callable(f)}
    assert specs and listed == specs, (sorted(specs - listed), sorted(listed - specs))


# --------------------------------------------------------------------------- the API reference


def signature(fn) -> str:
    """``name(a, b=1, *args, **kw)``: a callable's parameters as the reference writes them (no
    annotations, no ``self``/``cls``; a default as its repr, a function default by its name)."""
    if isinstance(fn, (classmethod, staticmethod)):
        fn = fn.__func__
    parts = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in ("self", "cls"):
            continue
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        if p.default is p.empty:
            parts.append(prefix + p.name)
        else:
            d = p.default
            parts.append(f"{p.name}={getattr(d, '__name__', None) if callable(d) else repr(d)}")
    return f"{fn.__name__}({', '.join(parts)})"


def public_members(obj) -> tuple[dict[str, str], set[str]]:
    """``({method: signature}, {attribute})`` that ``obj`` (a class or a module) defines itself."""
    methods, attributes = {}, set()
    if inspect.ismodule(obj):
        for name, v in vars(obj).items():
            if not name.startswith("_") and inspect.isfunction(v) and v.__module__ == obj.__name__:
                methods[name] = signature(v)
        return methods, attributes
    for name, v in vars(obj).items():
        if name.startswith("_") or inspect.isclass(v) and name not in ("Config", "Params"):
            continue
        if inspect.isfunction(v) or isinstance(v, (classmethod, staticmethod)):
            methods[name] = signature(v)
        else:  # class attributes and properties
            attributes.add(name)
    # annotated fields (attrs classes keep no class attribute for a field without a default)
    attributes |= {n for n in obj.__dict__.get("__annotations__", {}) if not n.startswith("_")} - set(methods)
    return methods, attributes


def reference_tables() -> dict[str, list[str]]:
    """``{dotted name: [first-column entries]}`` of every ``<!-- api: NAME -->`` table of the guide."""
    out = {}
    for m in re.finditer(r"<!-- api: ([\w.]+) -->\n(.*?)(?:\n\n|\Z)", DOC.read_text(encoding="utf-8"), re.S):
        rows = [r for r in m.group(2).splitlines() if r.startswith("|")][2:]
        out[m.group(1)] = [re.match(r"`([^`]+)`", r.split("|")[1].strip()).group(1) for r in rows]
    return out


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, ValueError):
        return importlib.import_module(dotted)


def test_the_api_reference_lists_every_member_with_its_signature():
    """Methods: exactly the class's own, each with its signature. Attributes: at least the class's own
    (the reference also names instance attributes set in ``__init__``)."""
    tables = reference_tables()
    kinds = {f"diffnas.core.protocols.{c.__name__}" for c in vars(protocols).values()
             if inspect.isclass(c) and c.__module__ == protocols.__name__ and c is not protocols.EmptyConfig}
    assert kinds <= set(tables), sorted(kinds - set(tables))
    for required in ("diffnas.core.population.PopulationSupernet", "diffnas.study.executors.WorkItem",
                     "diffnas.study.executors.RunSpec", "diffnas.study.executors.Outcome",
                     "diffnas.study.executors.Context", "diffnas.testing"):
        assert required in tables, required
    for dotted, rows in tables.items():
        methods, attributes = public_members(_resolve(dotted))
        documented = {r.split("(")[0]: r for r in rows}
        assert len(documented) == len(rows), f"{dotted}: a member is listed twice"
        doc_methods = {n: r for n, r in documented.items() if "(" in r}
        assert doc_methods == methods, f"{dotted}: documented {doc_methods}, code {methods}"
        missing = attributes - {n for n, r in documented.items() if "(" not in r}
        assert not missing, f"{dotted}: attributes missing from the reference: {sorted(missing)}"


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
                      ("loggers.0", "csv_log"), ("schedules.0", "step_decay"), ("discretiser", "strongest_op"),
                      ("data", "stripes")]:
        assert prov[key]["name"] == name and prov[key]["plugin"] == "guide"
        assert (prov[key]["distribution"], prov[key]["version"]) == ("diffnas-guide-plugin", "0.1.0")
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["hparams"]["relaxation"]["tau"] for m in metrics] == [1.0, 0.5, 0.25]  # step_decay, gamma 0.5
    assert (run / "guide_log.csv").read_text().count("\n") == 1 + len(metrics)


def test_installed_guide_executor_runs_the_study(installed, tmp_path):
    out = tmp_path / "study"
    done = _run(installed, "-m", "diffnas.cli", "study", str(GUIDE / "study.yaml"), "--out", str(out), "--no-plots",
                "--no-progress")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for seed in (0, 1):
        run = out / "runs" / f"chain-seed{seed}"
        assert json.loads((run / "result.json").read_text())["epochs_run"] == 2, done.stdout
        assert (run / "guide_log.csv").read_text().count("\n") == 3  # the logger, in the executor's process
        assert (out / "logs" / f"chain-seed{seed}.log").exists()  # the executor's log of the run's process
    assert "[1/2] chain-seed0:" in done.stdout and "[2/2] chain-seed1:" in done.stdout


def test_the_guide_package_tests_pass(installed):
    out = _run(installed, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(GUIDE / "tests"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert re.search(r"\b17 passed\b", out.stdout), out.stdout[-500:]
