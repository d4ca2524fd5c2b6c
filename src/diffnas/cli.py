"""The ``diffnas`` command line.

    diffnas search RECIPE [--out DIR] [--set key.path=value ...] [--logger NAME] [--no-progress]
    diffnas search --resume RUN_DIR
    diffnas validate RECIPE [--set ...]
    diffnas plugins [--json]
    diffnas show GENOTYPE_OR_RUN_DIR [--png DIR]

Bad input (recipes, data, run directories, plugins) prints a message naming the file, the key
path and what was expected, and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import attrs

from . import __version__
from .core.errors import DiffnasError

EXIT_USAGE = 2


def _cmd_search(args: argparse.Namespace) -> int:
    from . import api
    from .commands._format import result_lines

    progress = False if args.no_progress else None
    if args.resume:
        if args.recipe or args.logger or args.overwrite:
            raise DiffnasError("--resume RUN_DIR takes no RECIPE, --logger or --overwrite (the run's own recipe is used)")
        set_resume_hint(f"diffnas search --resume {args.resume}")
        summary = api.resume(args.resume, progress=progress, force=args.force)
        out = args.resume
    else:
        if not args.recipe:
            raise DiffnasError("search: a RECIPE (or --resume RUN_DIR) is required")
        if args.force:
            raise DiffnasError("--force applies to --resume only")
        resolved, cat = api.prepare(args.recipe, args.set, loggers=args.logger)
        out = args.out or resolved.recipe.output.dir or _default_out(args.recipe)
        from .core.engine import Search

        set_resume_hint(f"diffnas search --resume {out}")
        summary = Search(resolved, cat.pm, cat, out, overwrite=args.overwrite).run(progress=progress)
    import os

    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return 0
    for line in result_lines(out, summary):
        print(line)
    return 0


def _default_out(recipe: str) -> str:
    import time

    return str(Path("runs") / f"{Path(recipe).stem}-{time.strftime('%Y%m%d-%H%M%S')}")


def _cmd_validate(args: argparse.Namespace) -> int:
    from . import api
    from .core.engine import preflight_problems
    from .core.errors import RecipeError

    ok = True
    for path in args.recipes:
        try:
            resolved, cat = api.prepare(path, args.set)
            refused = preflight_problems(resolved, cat, cat.pm)  # what `search` would refuse before its first step
            if refused:
                raise RecipeError(refused, path)
        except DiffnasError as exc:
            print(message_lines(f"diffnas: {exc}"), file=sys.stderr)
            ok = False
            continue
        r = resolved.recipe
        regs = ", ".join(x.name for x in r.regularisers) or "-"
        print(f"{path}: ok ({r.search_space.name} / {r.relaxation.name} / {r.update_rule.name} / "
              f"regularisers: {regs} / {r.discretiser.name})")
    return 0 if ok else EXIT_USAGE


def describe_config(cls: type, prefix: str = "", expand: bool = False) -> list[dict[str, Any]]:
    """Each parameter of an attrs Config class: name, type, default and help (from the fields'
    ``help`` metadata). ``expand`` lists the keys of nested attrs sections (``weights_optimizer.lr``)
    instead of the section itself."""
    out = []
    for f in attrs.fields(cls):
        default = f.default
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        if expand and attrs.has(type(default)):
            for sub in describe_config(type(default), f"{prefix}{f.name}.", expand):
                sub["default"] = _jsonable(_get_path(default, sub["name"][len(prefix) + len(f.name) + 1:]))
                out.append(sub)
            continue
        out.append({
            "name": prefix + f.name,
            "type": getattr(f.type, "__name__", None) or str(f.type),
            "default": None if default is attrs.NOTHING else _jsonable(default),
            "required": default is attrs.NOTHING,
            "help": f.metadata.get("help", ""),
        })
    return out


def _get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def describe_settings() -> dict[str, list[dict[str, Any]]]:
    """The keys of the recipe's settings sections (``trainer``, ``data``, ``output``,
    ``diagnostics``) and top-level keys, with types, defaults and help, from the recipe schema."""
    from .core.recipe import SECTIONS, SLOTS, Recipe

    out = {name: describe_config(cls, f"{name}.", expand=True) for name, cls in SECTIONS.items()}
    top = [f for f in describe_config(Recipe) if f["name"] not in (*SECTIONS, *SLOTS)]  # slots are listed as components
    out["recipe"] = top
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool, type(None), list, dict)):
        return v
    return repr(v)


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .registry import Catalogue, get_plugin_manager, plugin_versions

    pm = get_plugin_manager()
    cat = Catalogue(pm)
    versions = plugin_versions(pm)
    data: dict[str, Any] = {"components": {}, "settings": describe_settings(), "plugins": []}
    for kind, entries in cat.entries.items():
        data["components"][kind] = [
            {"name": e.name, "plugin": e.plugin, "help": e.help, "params": describe_config(e.cls.Config)}
            for e in sorted(entries.values(), key=lambda e: e.name)
        ]
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda t: t[0]):
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        data["plugins"].append({"name": name, "version": versions.get(name, f"diffnas {__version__}"), "hooks": hooks})
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    for kind, entries in data["components"].items():
        print(f"{kind}:")
        for e in entries:
            print(f"  {e['name']:<28} [{e['plugin']}] {e['help']}")
            for p in e["params"]:
                d = "required" if p["required"] else f"default {json.dumps(p['default'])}"
                print(f"      {p['name']} ({p['type']}, {d}) {p['help']}")
    print("recipe settings:")
    for section, keys in data["settings"].items():
        for p in keys:
            d = "required" if p["required"] else f"default {json.dumps(p['default'])}"
            print(f"  {p['name']:<36} ({p['type']}, {d}) {p['help']}")
    print("plugins:")
    for p in data["plugins"]:
        print(f"  {p['name']:<28} {p['version']}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from . import api
    from .commands._format import epoch_table, score_lines, step_table
    from .commands._target import load_genotype

    genotype, run_dir = load_genotype(args.target)
    run = api.load_run(run_dir) if run_dir is not None and (run_dir / "recipe.yaml").exists() else None
    if run is not None:
        r = run.recipe
        print(f"run: {run_dir} ({'finished' if run.finished else 'unfinished'})")
        try:  # recipe.yaml as a search writes it; an edited one that lacks these is not described
            regs = ", ".join(x["name"] for x in r.get("regularisers", [])) or "-"
            print(f"recipe: {r['search_space']['name']} / {r['relaxation']['name']} / {r['update_rule']['name']} / "
                  f"regularisers: {regs} / {r['discretiser']['name']}; {r['trainer']['epochs']} epochs, "
                  f"seed {r['trainer']['seed']}")
        except (KeyError, TypeError, AttributeError):
            pass
    print(f"space: {genotype.space}")
    print(f"genotype: {genotype}")
    for name, cell in genotype.cells.items():
        print(f"{name}: " + ", ".join(f"{s}->{d}:{op}" for s, d, op in cell.edges) + f"  concat {list(cell.concat)}")
    data = run.recipe.get("data") if run is not None else None
    data_root = data.get("root") if isinstance(data, dict) and isinstance(data.get("root"), str) else None
    for line in score_lines(api.score_all(genotype, data_root), genotype.space):
        print(line)
    if run is not None:
        print(f"epochs recorded: {len(run.history)} (epoch: 0-based index, as in metrics.jsonl and the plots)")
        if run.history:
            for line in epoch_table(run.history):
                print("  " + line)
        steps = step_table(run.history)
        if steps:
            n = len(run.steps)
            shown = f"{len(steps) - 1} of {n} shown, all in steps.csv" if len(steps) - 1 < n else "all in steps.csv"
            print(f"step records: {n} ({shown}); the op weights' parameter-free share and skip weight "
                  f"(mean over edges), the α entropy and the current cell's score by global step")
            for line in steps:
                print("  " + line)
        res = run.result
        if res is not None:  # an edited result.json: values of the wrong type are shown as they are, cut
            from .core.limits import short

            stop = f", stopped early: {short(res['stop_reason'])}" if res.get("stop_reason") else ""
            print(f"epochs run: {short(res.get('epochs_run'))}{stop}")
            times = [res.get(k, 0.0) for k in ("search_time_s", "wall_time_s")]
            times = [f"{t:.1f}" if isinstance(t, (int, float)) and not isinstance(t, bool) else short(t) for t in times]
            print(f"search time: {times[0]} s (sum of epochs), wall time: {times[1]} s")
            pictures = res.get("pictures")
            if isinstance(pictures, list) and pictures:
                print("pictures: " + ", ".join(str(run_dir / p) if isinstance(p, str) else short(p) for p in pictures[:20]))
    if args.png:
        from .core.draw import draw_genotype
        from .core.rundir import io_errors

        png = Path(args.png)
        if png.exists() and not png.is_dir():
            raise DiffnasError(f"--png {png}: not a directory (it names an existing file; give a folder for the pictures)")
        with io_errors(png, "draw the cells into"):
            png.mkdir(parents=True, exist_ok=True)
            pictures = draw_genotype(genotype, png)
        for f in pictures:
            print(f"wrote {png / f}")
    return 0


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain_help(text: str | None) -> str | None:
    """A docstring as help text: reST roles (``:mod:`x.y```) and inline literals (double
    backquotes) become plain words; a ``~`` role keeps the last dotted name."""
    if not text:
        return text
    def role(m: re.Match) -> str:
        whole = m.group(0)
        name = m.group(1)
        return name.rsplit(".", 1)[-1] if whole.split("`")[1].startswith("~") else name
    return _ROLE.sub(role, text).replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffnas", description="Differentiable architecture search from plugin recipes.")
    p.add_argument("--version", action="version", version=f"diffnas {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="run a search from a YAML recipe")
    s.add_argument("recipe", nargs="?", help="recipe file")
    s.add_argument("--out", help="run directory (default: output.dir or runs/<recipe>-<time>)")
    s.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", help="override a recipe value")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue the search saved in RUN_DIR")
    s.add_argument("--logger", action="append", default=[], metavar="NAME",
                   help="add a logger (e.g. tensorboard: events in RUN_DIR/tensorboard); repeatable")
    s.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out (it is kept in OUT/.replaced-<time>/ until the new run's "
                        "first checkpoint); without it such a directory is refused")
    s.add_argument("--force", action="store_true",
                   help="with --resume: continue even though recipe.yaml was edited since the checkpoint "
                        "(recorded in metrics.jsonl)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_search)

    v = sub.add_parser("validate", help="check recipes without running them")
    v.add_argument("recipes", nargs="+")
    v.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    v.set_defaults(func=_cmd_validate)

    pl = sub.add_parser("plugins", help="list installed components with their parameters")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=_cmd_plugins)

    sh = sub.add_parser("show", help="print (and draw) a genotype or a run's result")
    sh.add_argument("target", help="a run directory, a genotype file, or a genotype string")
    sh.add_argument("--png", metavar="DIR", help="also draw the cells into DIR")
    sh.set_defaults(func=_cmd_show)

    import importlib

    from .commands import COMMAND_MODULES

    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    for sp in sub.choices.values():  # descriptions are docstrings: no reST in --help
        sp.description = plain_help(sp.description)
    return p


#: how to continue the command that is running, printed when it is interrupted (set by commands)
_resume_hint: list[str] = []


def set_resume_hint(command: str) -> None:
    """Name the command that continues the running one (printed on SIGINT / SIGTERM)."""
    _resume_hint[:] = [command]


class Terminated(KeyboardInterrupt):
    """Raised in the main thread when SIGTERM arrives, so that it unwinds like Ctrl-C (atomic
    writes discard their temporaries, the lock is released) and is reported the same way."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def message_lines(text: str, limit: int = 1000) -> str:
    """An error message with every line cut to ``limit`` characters (the documented cap)."""
    return "\n".join(x if len(x) <= limit else f"{x[:limit - 40]} ... (cut, {len(x)} characters)"
                     for x in text.split("\n"))


def short_path(path: Any, limit: int = 200) -> str:
    """A path as a message names it, cut to ``limit`` characters."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def main(argv: Sequence[str] | None = None) -> int:
    import signal
    import threading

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _resume_hint.clear()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except DiffnasError as exc:
        print(message_lines(f"diffnas: {exc}"), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # the last defence: a read or write a command did not wrap names its file
        where = f" {short_path(exc.filename)}" if getattr(exc, "filename", None) else ""
        print(f"diffnas: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        hint = (f"; continue from the last checkpoint with: {_resume_hint[0]}" if _resume_hint else "")
        print(f"diffnas: {what}{hint}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
