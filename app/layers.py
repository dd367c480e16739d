"""Which layers an image stacks, in the discovery order of spec section 10.1: the
layers embedded in the image, then FIM_LAYERS, then DATA/layers. Later layers
override earlier ones; `fim-layer list` shows this order and the sandbox mounts it."""

from __future__ import annotations

import os

from fim.app import image, log
from fim.app.expand import expand

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from fim.app.image import Layer, Layout


def _dwarfs_size(path: str) -> int | None:
    """The size of ``path`` (a file or URL) if it is a DwarFS file, else None (with the
    spec's warning)."""
    try:
        if image.is_url(path):
            if image.remote_read(path, 0, len(image.LAYER_MAGIC)) == image.LAYER_MAGIC:
                return image.remote(path).size
        else:
            with open(path, "rb") as f:
                if f.read(len(image.LAYER_MAGIC)) == image.LAYER_MAGIC:
                    return os.fstat(f.fileno()).st_size
    except image.FimImageError as exc:  # a URL: why it cannot be read, then the warning
        log.warning(exc.messages[0])
    except OSError:
        pass
    log.warning(f"Skipping invalid dwarfs filesystem '{path}'")
    return None


def _files_of(directory: str) -> list[str]:
    """The regular files directly in ``directory`` (symlinks to files count), by path."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(p for p in (os.path.join(directory, n) for n in names) if os.path.isfile(p))


def _external(paths: Iterator[str]) -> Iterator[Layer]:
    for path in paths:
        size = _dwarfs_size(path)
        if size is not None:
            yield image.Layer(path, 0, size)


def split_list(value: str) -> list[str]:
    """The elements of a ``:``-separated list whose elements may be URLs
    (``/a.layer:https://host:8080/b.layer``: the colons of a scheme and a port stay)."""
    parts = value.split(":")
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if part in ("http", "https") and i + 1 < len(parts) and parts[i + 1].startswith("//"):
            part += ":" + parts[i + 1]
            i += 1
            port = parts[i + 1] if i + 1 < len(parts) else ""
            if port.split("/", 1)[0].isdigit() and "/" not in part.split("//", 1)[1]:
                part += ":" + port
                i += 1
        out.append(part)
        i += 1
    return out


def _from_variable(value: str, environ: Mapping[str, str]) -> Iterator[str]:
    """The files and URLs FIM_LAYERS names (spec 10.2; ``$VAR`` expansion only, see
    app.expand)."""
    for element in split_list(expand(value, environ)):
        if image.is_url(element) or os.path.isfile(element):
            yield element
        elif os.path.isdir(element):
            yield from _files_of(element)


def discover(layout: Layout, layers_dir: str, environ: Mapping[str, str]) -> list[Layer]:
    """Every layer of the image at ``layout``, in discovery order."""
    embedded, tail = image.scan_layers(layout)
    if tail:
        log.warning(f"Ignoring {tail} bytes after the last valid layer of '{layout.path}' "
                    "(an interrupted or invalid append; the next commit overwrites them)")
    return [*embedded, *_external(_from_variable(environ.get("FIM_LAYERS", ""), environ)),
            *_external(iter(_files_of(layers_dir)))]


def log_mounting(found: Iterable[Layer]) -> None:
    """``FIM_DEBUG``'s line per layer a run mounts, in upstream's words (spec 16): its
    offsets are those of `fim-layer list`, which upstream's tests compare."""
    for layer in found:
        log.emit("D", f"Mounting layer from '{os.path.basename(layer.path)}' with offset "
                      f"'{layer.offset}'", "layers.py")


def log_overlay(lowers: Iterable[tuple[str, int | None]]) -> None:
    """One ``Overlay layer`` line per lower layer of the union, bottom first (upstream
    prints them for its bwrap overlay; its tests count them after each commit): a
    mounted layer's directory, or, for fim's stack, the layer's file and offset."""
    for where, offset in lowers:
        tail = "" if offset is None else f" with offset '{offset}'"
        log.emit("I", f"Overlay layer '{where}'{tail}", "layers.py")
