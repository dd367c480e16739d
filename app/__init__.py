"""app: the application core that the command lines call.

A started image (:mod:`app.session`), its file format (:mod:`app.image`, errors
:class:`app.image.FimImageError`) and configuration, its layers and stack, running a
program in the sandbox (:mod:`app.run`), layer commits, desktop integration, updates and
the runtime directory. Nothing here parses a command line or imports :mod:`cli`; the
``fim-*`` commands (:mod:`cli.commands`) and the host tool `fim` (:mod:`cli.tool`) call it.
"""
