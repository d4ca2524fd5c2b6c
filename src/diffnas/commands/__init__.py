"""Sub-commands beyond the core four (search, validate, plugins, show).

Each module listed in :data:`COMMAND_MODULES` defines ``register(subparsers)`` that adds its
sub-parser and sets ``func`` to a callable ``func(args) -> int``. Errors are raised as
:class:`~diffnas.core.errors.DiffnasError` so the CLI exits 2 with the message.
"""

COMMAND_MODULES: tuple[str, ...] = (
    "diffnas.commands.score",
    "diffnas.commands.train",
    "diffnas.commands.rank",
    "diffnas.commands.study",
    "diffnas.commands.population",
)
