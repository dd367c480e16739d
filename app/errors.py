"""The error type of the application (app and cli).

Anything the application refuses on purpose is a :class:`FimError`: ``main``
prints its one-line message as ``fim: <message>`` and exits with its code,
without a traceback (unless FIM_DEBUG=1).
"""


class FimError(Exception):
    """A failure with a one-line message for the user and a process exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
