"""The ``fim-*`` commands of an image, one module per command group.

These run *inside* a built image (``./app.flatimage fim-env ...``), dispatched by
:mod:`cli.boot`, and act on that image (its config, layers, binds). Not to be confused
with :mod:`cli.tool`, the ``fim`` developer tool that runs on the host and works on
DwarFS layers and image files from the outside.

Each module has ``run(ctx, args) -> int`` (``ctx`` is a :class:`app.session.Context`,
``args`` the words after the command) and raises :class:`app.log.UsageError`
for a refused command line or :class:`app.log.CommandError` when the command
fails; messages and outputs follow docs/flatimage-cli.md.
"""
