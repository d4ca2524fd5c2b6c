"""Exceptions raised by diffnas.

Every error that a user can fix (a bad recipe, a missing data file, a plugin clash) is a
:class:`DiffnasError`; the CLI prints its message and exits with status 2, never a traceback.
"""

from __future__ import annotations


class DiffnasError(Exception):
    """Base class of the errors that a user can act on."""


class RecipeError(DiffnasError):
    """A recipe (or study) file is invalid.

    ``problems`` holds one ``(message, path)`` pair per problem, so that every problem of a file is
    reported at once; ``str()`` gives the file name followed by one ``message @ path`` line each.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"invalid recipe {source}" if source else "invalid recipe"
        super().__init__(problem_report(head, self.problems))


#: problems listed in one message (the rest are counted)
MAX_PROBLEMS = 50


def problem_report(head: str, problems: list[tuple[str, str]]) -> str:
    """``head: N problem(s)`` and one line per problem (at most :data:`MAX_PROBLEMS`)."""
    lines = [f"{head}: {len(problems)} problem(s)"]
    lines += [problem_line(msg, path) for msg, path in problems[:MAX_PROBLEMS]]
    if len(problems) > MAX_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_PROBLEMS} more")
    return "\n".join(lines)


def problem_line(msg: str, path: str) -> str:
    """``  message @ key.path`` (no ``@`` when there is no key path), at most :data:`MAX_LINE`
    characters: a value that slipped into a message uncut (see ``limits.short``) is cut here."""
    if len(path) > MAX_LINE // 4:  # a key path built from a user's huge key
        path = f"{path[:MAX_LINE // 4]}... ({len(path)} characters)"
    tail = f" @ {path}" if path else ""
    room = MAX_LINE - 2 - len(tail)
    if len(msg) > room:
        cut = f" ... (cut, {len(msg)} characters)"
        msg = msg[:room - len(cut)] + cut
    return f"  {msg}{tail}"


#: the longest line of a problem report (the documented cap)
MAX_LINE = 1000


class PluginError(DiffnasError):
    """A plugin failed to import, registered a clashing name, or broke the plugin contract."""


class DataError(DiffnasError):
    """A data file is missing, unreadable or has the wrong format."""


class RunError(DiffnasError):
    """A run directory cannot be used (locked, unwritable, no checkpoint to resume from)."""


class NonFiniteError(DiffnasError):
    """A loss or an architecture parameter became NaN or infinite during a search."""
