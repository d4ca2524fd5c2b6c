"""No code runs from files: recipes are read with a safe YAML loader, checkpoints with
``torch.load(weights_only=True)``, and plugins load only from installed entry points, filtered by
``DIFFNAS_LOAD_PLUGINS`` and switched off by ``DIFFNAS_DISABLE_PLUGIN_AUTOLOAD``."""

from __future__ import annotations

import importlib.metadata
import os

import attrs
import pytest
import torch
import yaml

from diffnas.cli import main
from diffnas.core.errors import PluginError
from diffnas.core.hookspecs import hookimpl
from diffnas.core.outputs import CHECKPOINT
from diffnas.core.protocols import Relaxation
from diffnas.registry import Catalogue, get_plugin_manager
from diffnas.testing import tiny_recipe

# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("where", ["study", "flag"])
def test_study_executor_is_never_imported_from_a_name(tmp_path, monkeypatch, capsys, where):
    """A study (or --executor) naming ``module:Class`` is refused (exit 2); the module, which sits in
    the current directory and would write a file when imported, stays unimported."""
    import sys

    marker = tmp_path / "imported"
    (tmp_path / "evil_executor_mod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Boom: pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    study = {"runs": [{"label": "tiny", "recipe": tiny_recipe()}]}
    args = []
    if where == "study":
        study["executor"] = {"name": "evil_executor_mod:Boom"}
    else:
        args = ["--executor", "evil_executor_mod:Boom"]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", "s.yaml", "--out", "o", *args]) == 2
    err = capsys.readouterr().err
    assert "unknown executor 'evil_executor_mod:Boom'; known: gpus, ray, sequential, slurm" in err
    assert "@ study.executor.name" in err and "Traceback" not in err
    assert not marker.exists() and "evil_executor_mod" not in sys.modules
    assert not (tmp_path / "o").exists()


def test_recipe_with_python_tag_is_refused_without_running(tmp_path, capsys):
    marker = tmp_path / "pwned"
    text = yaml.safe_dump(tiny_recipe()) + f"description: !!python/object/apply:os.system ['touch {marker}']\n"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(text)
    for argv in (["search", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"], ["validate", str(recipe)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"invalid recipe {recipe}" in err
        assert "YAML tag not allowed" in err and "python/object/apply:os.system" in err, err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_python_tag_in_override_is_a_plain_string(tmp_path, capsys):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    main(["validate", str(recipe), "--set", f"description=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()


# --------------------------------------------------------------------------- checkpoints


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def run_dir(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(trainer={"epochs": 2, "steps_per_epoch": 1})))
    run = tmp_path / "run"
    assert main(["search", str(recipe), "--out", str(run), "--no-progress"]) == 0
    return run


def test_checkpoint_with_pickled_object_is_refused(run_dir, tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = torch.load(run_dir / CHECKPOINT, weights_only=True)
    ckpt["components"]["relaxation"]["evil"] = Evil(marker)
    torch.save(ckpt, run_dir / CHECKPOINT)
    capsys.readouterr()
    assert main(["search", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"refusing to load checkpoint {run_dir / CHECKPOINT}" in err, err
    assert "weights_only=True" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("content,words", [
    (b"\x00garbage, not a torch file", "is corrupt or not a diffnas checkpoint"),
    ("list", "is not a diffnas checkpoint (no 'format' entry)"),
    ("format", "checkpoint format 99 is not 1"),
    ("truncated", "is corrupt or not a diffnas checkpoint"),
])
def test_bad_checkpoint_is_a_clean_error(run_dir, capsys, content, words):
    path = run_dir / CHECKPOINT
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content == "format":
        ckpt = torch.load(path, weights_only=True)
        ckpt["format"] = 99
        torch.save(ckpt, path)
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[: 2000])
    else:
        path.write_bytes(content)
    capsys.readouterr()
    assert main(["search", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err


def test_checkpoint_of_another_recipe_is_a_clean_error(run_dir, capsys):
    data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    data["search_space"]["params"]["C"] = 8  # weights no longer fit
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["search", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'recipe.yaml'} differs from the recipe {run_dir / CHECKPOINT} was made with" in err, err
    assert main(["search", "--resume", str(run_dir), "--no-progress", "--force"]) == 2  # forced: the weights do not fit
    err = capsys.readouterr().err
    assert f"checkpoint {run_dir / CHECKPOINT} does not fit the run's recipe" in err, err


# --------------------------------------------------------------------------- plugin loading


def _relaxation(tag):
    class Fake(Relaxation):
        """A fake relaxation from an entry point."""

        Config = attrs.make_class(f"Cfg{tag}", {}, frozen=True)

    class Plugin:
        @hookimpl
        def diffnas_register_relaxations(self, register):
            register(f"fake_{tag}", Fake)

    return Plugin()


class FakeEntryPoint:
    def __init__(self, name, target, loaded, group="diffnas.plugins"):
        self.name, self.group, self.value = name, group, f"fake_pkg_{name}:plugin"
        self._target, self._loaded = target, loaded

    def load(self):
        self._loaded.append(self.name)
        if isinstance(self._target, BaseException):
            raise self._target
        return self._target


class FakeDist:
    def __init__(self, name, eps):
        self.metadata = {"name": name}
        self.version = "1.2.3"
        self.entry_points = eps


@pytest.fixture
def fake_plugins(monkeypatch):
    """Three installed distributions: plugins ``a`` and ``b``, and an entry point of another group."""
    loaded: list[str] = []
    dists = [FakeDist("diffnas-a", [FakeEntryPoint("a", _relaxation("a"), loaded)]),
             FakeDist("diffnas-b", [FakeEntryPoint("b", _relaxation("b"), loaded),
                                    FakeEntryPoint("c", _relaxation("c"), loaded, group="other.plugins")])]
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(dists))
    monkeypatch.delenv("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("DIFFNAS_LOAD_PLUGINS", raising=False)
    return loaded, dists


def _fakes(cat):
    return sorted(n for n in cat.entries["relaxation"] if n.startswith("fake_"))


def test_entry_points_load_by_default(fake_plugins):
    loaded, _ = fake_plugins
    pm = get_plugin_manager()
    assert _fakes(Catalogue(pm)) == ["fake_a", "fake_b"]
    assert sorted(loaded) == ["a", "b"]  # never the other group's entry point
    from diffnas.registry import plugin_versions

    assert plugin_versions(pm) == {"a": "diffnas-a 1.2.3", "b": "diffnas-b 1.2.3"}


@pytest.mark.parametrize("allow,want", [("a", ["fake_a"]), (" b , a ", ["fake_a", "fake_b"]), ("", [])])
def test_allowlist(fake_plugins, monkeypatch, allow, want):
    loaded, _ = fake_plugins
    monkeypatch.setenv("DIFFNAS_LOAD_PLUGINS", allow)
    assert _fakes(Catalogue(get_plugin_manager())) == want
    assert sorted(loaded) == [w.removeprefix("fake_") for w in want]  # the others are not even imported


def test_allowlist_naming_an_unknown_plugin_says_so(fake_plugins, monkeypatch, capsys):
    monkeypatch.setenv("DIFFNAS_LOAD_PLUGINS", "a,zzz")
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "DIFFNAS_LOAD_PLUGINS names plugin(s) that are not installed: zzz; installed: a, b" in err, err


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_disable_autoload(fake_plugins, monkeypatch, value):
    loaded, _ = fake_plugins
    monkeypatch.setenv("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", value)
    assert _fakes(Catalogue(get_plugin_manager())) == []
    assert loaded == []
    assert "softmax" in Catalogue(get_plugin_manager()).entries["relaxation"]  # bundled plugins stay


def test_disable_autoload_off_values(fake_plugins, monkeypatch):
    monkeypatch.setenv("DIFFNAS_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert _fakes(Catalogue(get_plugin_manager())) == ["fake_a", "fake_b"]
    assert _fakes(Catalogue(get_plugin_manager(autoload=False))) == []


def test_broken_plugin_is_named(fake_plugins, monkeypatch, capsys):
    loaded, dists = fake_plugins
    dists.append(FakeDist("diffnas-broken", [FakeEntryPoint(
        "broken", ModuleNotFoundError("No module named 'missing_dep'"), loaded)]))
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    msg = str(info.value)
    assert 'error importing plugin "broken"' in msg and "diffnas-broken" in msg and "missing_dep" in msg, msg
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert 'error importing plugin "broken"' in err and "Traceback" not in err
    monkeypatch.setenv("DIFFNAS_LOAD_PLUGINS", "a,b")  # the allowlist keeps it out
    assert _fakes(Catalogue(get_plugin_manager())) == ["fake_a", "fake_b"]
    assert "broken" in loaded and loaded.count("broken") == 2


def test_plugin_calling_sys_exit_at_import_is_named(fake_plugins, capsys):
    loaded, dists = fake_plugins
    dists.append(FakeDist("diffnas-quitter", [FakeEntryPoint("quitter", SystemExit(3), loaded)]))
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert 'error importing plugin "quitter" (entry point fake_pkg_quitter:plugin of diffnas-quitter): called sys.exit(3)' \
        in err, err


@pytest.mark.parametrize("exc", [RuntimeError("boom in register"), SystemExit(4)])
def test_plugin_whose_registration_hook_raises_is_named(fake_plugins, capsys, exc):
    loaded, dists = fake_plugins

    class Raising:
        @hookimpl
        def diffnas_register_relaxations(self, register):
            raise exc

    dists.append(FakeDist("diffnas-raising", [FakeEntryPoint("raising", Raising(), loaded)]))
    assert main(["validate", "examples/recipes/quickstart.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffnas: plugin 'raising' failed in diffnas_register_relaxations: ") and "Traceback" not in err, err

