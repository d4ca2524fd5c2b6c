"""The ``csv_log`` logger: one CSV line per epoch in the run directory."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import attrs

from diffnas.core.config import help_field
from diffnas.core.hookspecs import hookimpl
from diffnas.core.protocols import Logger
from diffnas.core.rundir import write_text


def _file_name(inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if not value or PurePath(value).name != value or value in (".", "..") or "\\" in value:
        raise ValueError(f"{attribute.name!r} must be a file name inside the run directory, got {value!r}")


class CsvLog(Logger):
    """Writes one CSV line per epoch (epoch, losses, mean α entropy) to ``<run dir>/<filename>``."""

    @attrs.frozen
    class Config:
        filename: str = help_field("guide_log.csv", "file name inside the run directory", validator=_file_name)

    def __init__(self, config=None):
        super().__init__(config)
        self.lines = ["epoch,train_loss,valid_loss,entropy"]

    @hookimpl
    def diffnas_epoch_end(self, search, epoch, record):
        entropy = sum(record["entropy"].values()) / len(record["entropy"])
        self.lines.append(f"{epoch},{record['train_loss']:.6f},{record.get('valid_loss', float('nan')):.6f},"
                          f"{entropy:.6f}")
        if search.run_dir is not None and search.world.is_main:  # rank 0 writes, atomically
            write_text(search.run_dir / self.config.filename, "\n".join(self.lines) + "\n")

    def state_dict(self):  # checkpointed with the search: a resumed run continues the same file
        return {**super().state_dict(), "lines": list(self.lines)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.lines = list(state.get("lines", self.lines))

