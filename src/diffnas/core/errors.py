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
        lines = [f"{head}: {len(self.problems)} problem(s)"]
        lines += [f"  {msg} @ {path}" for msg, path in self.problems]
        super().__init__("\n".join(lines))


class PluginError(DiffnasError):
    """A plugin failed to import, registered a clashing name, or broke the plugin contract."""


class DataError(DiffnasError):
    """A data file is missing, unreadable or has the wrong format."""


class RunError(DiffnasError):
    """A run directory cannot be used (locked, unwritable, no checkpoint to resume from)."""


class NonFiniteError(DiffnasError):
    """A loss or an architecture parameter became NaN or infinite during a search."""
