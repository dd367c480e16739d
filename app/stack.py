"""The filesystem stack of a container, built as plain objects for one FUSE mount.

``OwnerView( CaseFold( Union( HostDir(upper), [DwarfsImage(top), ..., DwarfsImage(bottom)] )))``:
the union reads the DwarFS layers directly, so the whole stack is served by one
kernel mount (see ARCHITECTURE.md). The OwnerView (``owner=``) is for unprivileged
runs: everything shows as the caller's, while the upper keeps the stored owners
(``inside=``, HostDir's logical owners; see fimfs.owners and fimfs.hostdir).
`fim mount --layer` builds it from the command line; booting an image builds the
same stack from its config.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fim.app.errors import FimError
from fim.app.image import Layer
from fim.fimfs.remote import is_url

if TYPE_CHECKING:
    from fim.fimfs.vfs import Filesystem

StrPath = str | os.PathLike
#: A layer: a DwarFS file (`fim mount --layer`), or an :class:`app.image.Layer` (one
#: inside a larger file: an image's).
LayerSource = StrPath | Layer


def _split(layer: LayerSource, offset: int | None) -> tuple[StrPath, int | None, int | None]:
    if isinstance(layer, Layer):
        return layer.path, layer.offset, layer.size
    return layer, offset, None


def check_sources(layers: Sequence[LayerSource], upper: StrPath | None) -> None:
    """Refuse missing or unusable layers and upper directories with a one-line FimError.

    Cheap checks only (the layers are opened by :func:`build_stack`), so a caller can
    run them before forking a mount daemon.
    """
    if not layers:
        raise FimError("no layers given")
    for source in layers:
        layer = _split(source, None)[0]
        if is_url(layer):
            continue  # reached when opened (fimfs.remote)
        name = os.fsdecode(layer)
        if not os.path.exists(layer):
            raise FimError(f"layer {name} does not exist")
        if not os.path.isfile(layer):
            raise FimError(f"layer {name} is not a file")
        if not os.access(layer, os.R_OK):
            raise FimError(f"layer {name} is not readable")
    if upper is None:
        return
    name = os.fsdecode(upper)
    if not os.path.exists(upper):
        raise FimError(f"upper directory {name} does not exist")
    if not os.path.isdir(upper):
        raise FimError(f"upper directory {name} is not a directory")
    if not os.access(upper, os.R_OK | os.W_OK | os.X_OK):
        raise FimError(f"upper directory {name} is not writable")


def build_stack(
    layers: Sequence[LayerSource],
    upper: StrPath | None = None,
    casefold: bool = False,
    *,
    cache_bytes: int | None = None,
    offset: int | None = None,
    owner: tuple[int, int] | None = None,
    inside: tuple[int, int] | None = None,
) -> Filesystem:
    """The stack over ``layers`` (bottom first: later layers win), writable into ``upper``.

    No ``upper``: a read-only view. ``cache_bytes`` is each layer's block cache,
    ``offset`` where each layer given as a plain path starts in its file (None:
    auto-detect). Errors are a
    one-line FimError naming the layer or directory at fault; layers opened before
    the failure are closed again.

    ``owner``: present every file as owned by this host uid/gid (an OwnerView,
    outermost). ``inside``: the identity that new files and chowns to ``owner`` are
    stored as; either one turns on the upper's logical owners (``user.fim.owner``),
    and logical modes when this process is not root (fimfs.hostdir), which is also
    how a host root reads the owners and modes an unprivileged run stored.
    Both None: the real owners, as they are on disk.
    """
    from fim.fimfs.casefold import CaseFold
    from fim.fimfs.dwarfs import DwarfsImage
    from fim.fimfs.errors import FimfsError
    from fim.fimfs.hostdir import HostDir
    from fim.fimfs.union import Union

    check_sources(layers, upper)
    kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    opened: list[Filesystem] = []
    try:
        for source in layers:
            layer, start, size = _split(source, offset)
            try:
                opened.append(DwarfsImage.from_path(layer, offset=start, size=size, **kwargs))
            except (FimfsError, OSError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                raise FimError(f"layer {os.fsdecode(layer)}: {reason}") from exc
        try:
            logical = owner is not None or inside is not None
            upper_fs = None if upper is None else HostDir(
                os.fspath(upper), owner_xattr=logical, create_owner=inside)
        except (FimfsError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise FimError(f"upper directory {upper!s}: {reason}") from exc
    except BaseException:
        for fs in opened:
            fs.close()
        raise
    stack: Filesystem = Union(upper_fs, opened[::-1])
    if casefold:
        stack = CaseFold(stack)
    if owner is not None:
        from fim.fimfs.owners import OwnerView

        stack = OwnerView(stack, owner[0], owner[1], inside=inside)
    return stack
