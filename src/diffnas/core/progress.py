"""One progress mechanism for all long work: a search's steps, a population's steps, a training's
steps, ``diffnas rank``'s architectures and a study's epochs.

It is tqdm everywhere, in one of three modes chosen by where the output goes:

* a terminal: the usual bar, redrawn in place;
* a notebook: tqdm's notebook widget (``tqdm.auto``);
* anything else (a log file, CI, a pipe, a Ray or SLURM log): the same status as one plain line
  every :data:`LINE_INTERVAL_S` seconds and a last line when the work ends, without carriage
  returns or escape codes, so a log shows how far the work got.

``progress=False`` (``--no-progress``) turns it off; ``None`` means the caller's default (the
recipe's ``output.progress`` for searches and trainings, on for ``rank`` and studies).
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

#: seconds between two status lines when the output is not a terminal
LINE_INTERVAL_S = 30.0
#: the width of a status line off a terminal (tqdm cannot ask a log file for its width)
LINE_WIDTH = 100
#: a status line off a terminal: the numbers without the bar graphic
LINE_FORMAT = "{desc}{n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


class _Lines:
    """A text stream for tqdm that turns each in-place redraw (``\\r`` + status) into one line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line.strip():
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        flush = getattr(self.stream, "flush", None)
        if flush is not None:
            flush()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or replaced streams
        return False


def progress_bar(total: int | None, enabled: bool = True, initial: int = 0, unit: str = "step",
                 desc: str | None = None, stream: TextIO | None = None) -> Any:
    """A tqdm bar for ``total`` units (``None``: off, when ``enabled`` is false).

    Use it as any tqdm bar (``update``, ``set_postfix_str``, ``write``, ``close``).

    :param stream: where it writes (default ``sys.stderr``).
    """
    if not enabled:
        return None
    from tqdm.auto import tqdm as auto_tqdm
    from tqdm.std import tqdm as std_tqdm

    stream = stream if stream is not None else sys.stderr
    common = dict(total=total, initial=initial, unit=unit, desc=desc, leave=True)
    if "notebook" in getattr(auto_tqdm, "__module__", ""):  # inside Jupyter: the widget
        return auto_tqdm(**common)
    if _is_tty(stream):
        return std_tqdm(file=stream, dynamic_ncols=True, **common)
    common["desc"] = f"{desc}: " if desc else ""  # the line format has no bar to separate it
    return std_tqdm(file=_Lines(stream), ncols=LINE_WIDTH, mininterval=LINE_INTERVAL_S, maxinterval=LINE_INTERVAL_S,
                    bar_format=LINE_FORMAT, **common)
