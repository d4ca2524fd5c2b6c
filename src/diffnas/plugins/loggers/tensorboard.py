"""The ``tensorboard`` logger: a search's record as TensorBoard events in ``RUN_DIR/tensorboard``.

Select it with ``loggers: [{name: tensorboard}]`` in a recipe or ``diffnas search --logger
tensorboard``; view with ``tensorboard --logdir RUN_DIR``. It needs the optional ``tensorboard``
package (``pip install diffnas[tensorboard]``); without it the recipe is refused when it is loaded.

Written, with the epoch index of ``metrics.jsonl`` (0-based) as the step:

* every scalar of the epoch's record (:func:`diffnas.core.outputs.scalars`, dots turned into
  slashes: ``train_loss``, ``valid_acc``, ``entropy/normal``, ``scores/nb201/cifar10_test`` ...);
* op strengths per edge, ``alpha/<cell>/<src>-<dst>/<op>`` (``op_strengths``), and as a heatmap
  image per cell type, ``alphas/<cell>`` (``alpha_images``);
* the current genotype's cells as images, ``cell/<cell>`` (``cell_images``), and as text;
* the hyperparameters (every component's params and the trainer's settings) in the HParams tab,
  with the final scores as its metrics, and the resolved recipe as text;
* the step records of ``diagnostics.every_steps`` (:mod:`diffnas.core.step_records`) with the
  **global step** as the step, in their own run ``<subdir>/steps`` (``parameter_free_share/normal``,
  ``skip_weight/normal``, ``entropy/normal``, ``scores/nb201/cifar10_test``, ``hessian_eigenvalue``),
  written when their epoch ends (``steps``).

A resumed search purges the events written after the checkpoint it continues from, so the curves
have no duplicate epochs or steps (the step records have their own event files because a purge
applies to every tag of a file, and their steps are not epochs).
"""

from __future__ import annotations

import json
import struct
from pathlib import PurePosixPath
from typing import Any

import attrs
import yaml

from ...core.cells import edge_ops, searched_edges
from ...core.config import help_field
from ...core.errors import PluginError
from ...core.hookspecs import hookimpl
from ...core.outputs import scalars
from ...core.protocols import Logger
from ...core.rundir import output_folder

INSTALL = "pip install diffnas[tensorboard]"


def _relative_dir(inst: Any, attribute: Any, value: str) -> None:
    from fnmatch import fnmatch

    from ...core.limits import short
    from ...core.outputs import RUN_COMPANIONS, RUN_OUTPUTS

    p = PurePosixPath(value)
    if not value or p.is_absolute() or ".." in p.parts or "\\" in value or "\0" in value:
        raise ValueError(f"{attribute.name!r} must be a folder inside the run directory (relative, no '..'), "
                         f"got {short(value)}")
    if len(value) > 1000 or any(len(part.encode("utf-8")) > 255 for part in p.parts):
        raise ValueError(f"{attribute.name!r} must be a path of folder names of at most 255 bytes each (1000 "
                         f"characters in all), got {short(value)}")
    first = p.parts[0]
    if first.startswith(".") or (first != "tensorboard" and any(fnmatch(first, pat) for pat in RUN_OUTPUTS + RUN_COMPANIONS)):
        raise ValueError(f"{attribute.name!r} must not name one of the run's own files or a hidden name "
                         f"({', '.join(RUN_OUTPUTS[:5])} ...), got {short(value)}")


def _png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's IHDR chunk."""
    return struct.unpack(">II", png[16:24])


class TensorBoardLogger(Logger):
    """TensorBoard events: per-epoch scalars, op strengths, α heatmaps, cell pictures, hyperparameters."""

    @attrs.frozen
    class Config:
        subdir: str = help_field("tensorboard", "folder inside the run directory for the event files",
                                 validator=_relative_dir)
        op_strengths: bool = help_field(True, "one scalar per edge and op (alpha/<cell>/<src>-<dst>/<op>)")
        alpha_images: bool = help_field(True, "a heatmap of the op strengths per cell type every epoch")
        cell_images: bool = help_field(True, "a picture of the current genotype's cells every epoch")
        steps: bool = help_field(True, "the step records (diagnostics.every_steps) at their global step, "
                                       "in <subdir>/steps")

    def __init__(self, config: Any = None):
        super().__init__(config)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise PluginError(f"the tensorboard logger needs the tensorboard package: {INSTALL}") from None
        self._writer_cls = SummaryWriter
        self.writer: Any = None
        self.steps_writer: Any = None
        self._steps_purge: int | None = None

    # ------------------------------------------------------------------ hooks

    @hookimpl
    def diffnas_search_start(self, search: Any) -> None:
        if search.out_dir is None or not search.world.is_main:
            return
        epoch = search.state.epoch
        # made folder by folder, never through a symbolic link (the events stay inside the run directory)
        log_dir = output_folder(search.out_dir, self.config.subdir, "TensorBoard folder")
        # purge_step: a resumed run drops the events of epochs it is about to repeat
        self.writer = self._writer_cls(log_dir=str(log_dir), purge_step=epoch if epoch > 0 else None)
        from ...core.step_records import step_records

        done = step_records(search.state.history)  # written already: the finished epochs' records
        self._steps_purge = done[-1]["global_step"] + 1 if done else None
        self._write_hparams(search)
        recipe = yaml.safe_dump(search.resolved.to_dict(), sort_keys=False)
        self.writer.add_text("recipe", "```\n" + recipe + "```", epoch)

    @hookimpl
    def diffnas_epoch_end(self, search: Any, epoch: int, record: dict) -> None:
        w = self.writer
        if w is None:
            return
        for key, value in scalars(record, sep="/").items():
            if key != "epoch":
                w.add_scalar(key, value, epoch)
        from ...core.draw import draw_alphas, draw_cell
        from ...core.genotype import Genotype

        for cell, probs in record.get("alphas", {}).items():
            graph = search.cells[cell]
            edges, ops = searched_edges(graph), edge_ops(graph)
            if self.config.op_strengths:
                for (src, dst), names, row in zip(edges, ops, probs):
                    for op, v in zip(names, row):
                        w.add_scalar(f"alpha/{cell}/{src}-{dst}/{op}", v, epoch)
            if self.config.alpha_images:
                self._add_png(f"alphas/{cell}", draw_alphas(probs, edges, ops, f"epoch {epoch}: {cell} op strengths"), epoch)
        if self.config.cell_images and "genotype" in record:
            genotype = Genotype.parse(record["genotype"])
            for name, cell in genotype.cells.items():
                self._add_png(f"cell/{name}", draw_cell(cell.to_graph(name), f"epoch {epoch}: {genotype.space} {name} cell"), epoch)
        w.add_text("genotype", f"`{record.get('genotype', '')}`", epoch)
        w.flush()
        if self.config.steps and record.get("steps"):
            self._write_steps(search, record["steps"])

    def _write_steps(self, search: Any, steps: list[dict]) -> None:
        if self.steps_writer is None:  # made on first use: no event files for runs without step records
            log_dir = output_folder(search.out_dir, str(PurePosixPath(self.config.subdir) / "steps"), "TensorBoard folder")
            self.steps_writer = self._writer_cls(log_dir=str(log_dir), purge_step=self._steps_purge)
        sw = self.steps_writer
        for rec in steps:
            g = rec["global_step"]
            for key, value in scalars(rec, sep="/").items():
                if key not in ("global_step", "epoch"):
                    sw.add_scalar(key, value, g)
        sw.flush()

    @hookimpl
    def diffnas_search_end(self, search: Any, genotype: Any, record: dict) -> None:
        w = self.writer
        if w is None:
            return
        step = record.get("epochs_run", search.state.epoch)
        for key, value in scalars({"final": {"scores": record.get("scores", {})}}, sep="/").items():
            w.add_scalar(key, value, step)
        w.add_text("final_genotype", f"`{record.get('genotype', '')}`", step)
        w.flush()

    def outputs(self) -> tuple[str, ...]:
        """The event folder (``subdir``): a run output, refused or moved aside as the others are."""
        return (self.config.subdir,)

    def close(self, search: Any) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.steps_writer is not None:
            self.steps_writer.close()
            self.steps_writer = None

    # ------------------------------------------------------------------ helpers

    def _add_png(self, tag: str, png: bytes, step: int) -> None:
        """Write PNG bytes as an image summary as they are (no decoding and re-encoding)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height = _png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def _write_hparams(self, search: Any) -> None:
        """The HParams tab: every component's params and the trainer's settings; its metrics are
        the final scores this run will log (``final/scores/...``) and the last epoch's accuracies."""
        from torch.utils.tensorboard.summary import hparams

        recipe = search.resolved.to_dict()
        flat: dict[str, Any] = {}
        for slot in ("search_space", "relaxation", "update_rule", "discretiser"):
            flat[slot] = recipe[slot]["name"]
            _flatten(flat, slot, recipe[slot].get("params", {}))
        for slot in ("regularisers", "schedules"):
            for i, ref in enumerate(recipe[slot]):
                flat[f"{slot}.{i}"] = ref["name"]
                _flatten(flat, f"{slot}.{i}", ref.get("params", {}))
        _flatten(flat, "trainer", recipe["trainer"])
        _flatten(flat, "data", {k: v for k, v in recipe["data"].items() if k != "params"})
        metrics = {"train_acc": None, "valid_acc": None}
        space = recipe["search_space"]["name"]
        if space == "nb201":
            metrics["final/scores/nb201/cifar10_test"] = None
        elif space == "darts":
            metrics["final/scores/nb301/val_acc"] = None
        from tensorboard.plugins.hparams.metadata import NULL_TENSOR

        exp, ssi, sei = hparams(flat, {k: 0.0 for k in metrics})
        fw = self.writer.file_writer
        for summary in (exp, ssi, sei):
            # as TensorBoard's own hparams summaries: each value carries an empty tensor, so that readers
            # that keep only tensor values (EventAccumulator.Tags(), tensorboard's data provider) list them
            for value in summary.value:
                value.tensor.CopyFrom(NULL_TENSOR)
            fw.add_summary(summary)


def _flatten(out: dict[str, Any], prefix: str, value: Any) -> None:
    """Hyperparameter values TensorBoard accepts: numbers, strings and booleans; lists as JSON text."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(out, f"{prefix}.{k}", v)
    elif value is None:
        out[prefix] = "none"
    elif isinstance(value, (bool, int, float, str)):
        out[prefix] = value
    else:
        out[prefix] = json.dumps(value)


@hookimpl
def diffnas_register_loggers(register):
    register("tensorboard", TensorBoardLogger)
