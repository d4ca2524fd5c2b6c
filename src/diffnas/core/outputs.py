"""What a search writes into its run directory (all atomically, see :mod:`diffnas.core.rundir`).

* ``recipe.yaml``: the resolved recipe, every default filled in;
* ``metrics.jsonl``: one JSON line per finished epoch (losses, accuracies, learning rates, α
  entropy, op strengths, the current genotype, its op counts and benchmark scores);
* ``checkpoint.pt``: everything needed to resume exactly (loads with ``weights_only=True``);
* ``genotype.json``, ``result.json`` and ``cell_<type>.png`` at the end.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import torch
import yaml

from .genotype import Genotype
from .rundir import RunDir, atomic_write, write_json, write_text

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Search

CHECKPOINT = "checkpoint.pt"


class RunWriter:
    """Writes one search's outputs; holds the run directory's lock while the search runs."""

    def __init__(self, search: "Search"):
        self.search = search
        self.dir = RunDir(search.out_dir)

    def open(self) -> None:
        self.dir.prepare().lock()
        write_text(self.dir.file("recipe.yaml"), yaml.safe_dump(self.search.resolved.to_dict(), sort_keys=False))

    def close(self) -> None:
        self.dir.unlock()

    def write_metrics(self) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.search.state.history)
        write_text(self.dir.file("metrics.jsonl"), lines)

    def checkpoint(self) -> None:
        state = self.search.state_dict()

        def save(f: Any) -> None:
            buf = io.BytesIO()
            torch.save(state, buf)
            f.write(buf.getbuffer())

        atomic_write(self.dir.file(CHECKPOINT), save)

    def epoch_done(self, record: dict) -> None:
        self.write_metrics()
        self.checkpoint()

    def finish(self, genotype: Genotype, summary: dict) -> None:
        write_json(self.dir.file("genotype.json"), genotype.to_dict())
        self.checkpoint()
        if self.search.recipe.output.draw_cells:
            from .draw import draw_genotype

            summary["pictures"] = draw_genotype(genotype, self.dir.path)
        write_json(self.dir.file("result.json"), summary)


def load_checkpoint(path: Any, map_location: Any = "cpu") -> dict:
    """Load a checkpoint safely (no code execution: ``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)
