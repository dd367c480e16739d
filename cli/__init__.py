"""cli: the application (the single-file image, its config, the fim-* commands and `fim`).

Two command families live here: :mod:`cli.tool` is `fim`, the developer tool run on
the host; :mod:`cli.commands` are the ``fim-*`` commands run inside a built image.
:mod:`cli.image` is the single-file image format itself (its errors are
:class:`cli.image.FimImageError`); :mod:`cli.tool.image_file` is the `fim image` subcommand.
"""
