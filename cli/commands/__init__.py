"""The ``fim-*`` commands of an image, one module per command group.

Each module has ``run(ctx, args) -> int`` (``ctx`` is a :class:`cli.boot.Context`,
``args`` the words after the command) and raises :class:`cli.log.UsageError`
for a refused command line or :class:`cli.log.CommandError` when the command
fails; messages and outputs follow docs/flatimage-cli.md.
"""
