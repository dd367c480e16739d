"""cli: the command lines over the application core (:mod:`app`).

Three programs live here: :mod:`cli.boot` is what runs when an image is executed (it
starts a session and dispatches to the ``fim-*`` commands of :mod:`cli.commands`);
:mod:`cli.tool` is `fim`, the developer tool run on the host; :mod:`cli.build` builds
images and their runtimes. Each parses arguments, calls :mod:`app`, and prints.
"""
