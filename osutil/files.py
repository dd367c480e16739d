"""Writing a file whole or not at all: a temporary file beside it, renamed over it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def replacing(path: str, tmp: str | None = None) -> Iterator[str]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` when
    the block ends normally, removed when it raises.

    ``tmp``: the temporary name (default: hidden beside ``path``, unique to the call).
    """
    if tmp is None:
        directory, name = os.path.split(os.path.abspath(path))
        tmp = os.path.join(directory, f".{name}.{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_atomic(path: str, data: bytes) -> None:
    """Write ``path`` whole: readers see the old content or the new, never a part."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
