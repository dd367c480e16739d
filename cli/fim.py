"""The `fim` tool: inspect, extract, mount and build DwarFS layers on their own.

Each subcommand lives in a module of :mod:`cli.tool` that exposes
``register(subparsers)`` and sets ``func=handler`` (``handler(args) -> int``).
Modules are imported at start-up only to build the parser, so they keep heavy
imports inside their handlers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from fim.app.errors import FimError

#: The tool modules and the subcommands each registers.
_TOOLS = {
    "fim.cli.tool.inspect": ("ls", "cat", "info", "check"),
    "fim.cli.tool.extract": ("extract",),
    "fim.cli.tool.mount": ("mount", "umount"),
    "fim.cli.tool.image_file": ("image",),
    "fim.cli.tool.build": ("build",),
    "fim.cli.tool.create": ("create",),
    "fim.cli.tool.run": ("run",),
}


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its subcommands' too, without argparse's import of shutil:
    every add_argument builds a help formatter, whose width argparse asks
    shutil.get_terminal_size for (shutil, with zlib, bz2 and lzma, costs a cold
    `fim mount` ~6 ms). The width is found the same way: $COLUMNS, the terminal, 80."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        formatter: type[argparse.HelpFormatter] = self.formatter_class  # type: ignore[assignment]
        return formatter(prog=self.prog, width=_columns() - 2)


def _columns() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser with every subcommand registered, or only ``command``'s
    module when it names one (a start-up of `fim mount` then imports no builder)."""
    parser = _Parser(
        prog="fim",
        description="Inspect, extract, mount and build DwarFS layers.",
        epilog="Set FIM_DEBUG=1 to get a traceback with errors.",
    )
    subparsers = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    known = any(command in names for names in _TOOLS.values())
    for name, names in _TOOLS.items():
        if not known or command in names:
            importlib.import_module(name).register(subparsers)
    return parser


def _describe(exc: BaseException) -> str:
    """The one-line message for an error the user should see."""
    if isinstance(exc, OSError) and exc.strerror:
        names = [n for n in (exc.filename, exc.filename2) if n is not None]
        return ": ".join([*map(os.fsdecode, names), exc.strerror])
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _report(message: str) -> None:
    if os.environ.get("FIM_DEBUG") == "1":
        import traceback  # only here: it costs every start of `fim` ~3 ms

        traceback.print_exc()
    print(f"fim: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `fim` with ``argv`` (default: the process arguments); returns the exit code."""
    from fim.fimfs.errors import FimfsError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        from fim.app.log import silence_stdout

        silence_stdout()
        return 141  # what a shell reports for a writer killed by SIGPIPE
    except KeyboardInterrupt:
        _report("interrupted")
        return 130
    except FimError as exc:
        _report(exc.message)
        return exc.exit_code
    except (FimfsError, OSError) as exc:
        _report(_describe(exc))
        return 1
    except Exception as exc:  # a bug: still one line, the traceback with FIM_DEBUG=1
        _report(
            f"internal error: {type(exc).__name__}: {_describe(exc)} "
            "(set FIM_DEBUG=1 for a traceback)"
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
