"""`fim build rootfs|blueprint|debian`: a complete single-file image from a root
filesystem, the minimal blueprint root, or a fresh Debian.

Each builds one DwarFS layer (compression level FIM_COMPRESSION_LEVEL, default 7)
from a root completed with the skeleton of :mod:`cli.build.rootfs`, writes the image
with the chosen runtime, then ``OUTPUT.sha256sum`` beside it (``sha256sum -c``
reads it in OUTPUT's directory), as FlatImage's build does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable

from fim.app.errors import FimError
from fim.cli.tool import size_arg
from fim.osutil import files

DEFAULT_LEVEL = 7


def compression_level(environ: dict[str, str] | os._Environ[str]) -> int:
    """FIM_COMPRESSION_LEVEL as FlatImage reads it: non-numbers give 7, clamped to 0-9."""
    text = environ.get("FIM_COMPRESSION_LEVEL", "").strip()
    try:
        return min(9, max(0, int(text)))
    except ValueError:
        return DEFAULT_LEVEL


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `fim build rootfs|blueprint|debian`."""
    from fim.cli.build import payload

    default_runtime = payload.default_kind()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                        help="the image to write (replaced only once complete)")
    common.add_argument(
        "--runtime", choices=payload.RUNTIMES, default=default_runtime,
        help="frozen: the portable runtime (PyInstaller build of fim with bwrap and libfuse; "
        "the image needs no Python on the host); python: fim's code run by the host's "
        "python3. Default: frozen when PyInstaller is installed (pip install 'fim[build]'), "
        f"else python; here: {default_runtime}")
    common.add_argument("--reserved-size", type=size_arg, default="4m", metavar="SIZE",
                        help="bytes for the configuration, a multiple of 4k (default 4m)")
    p = subparsers.add_parser(
        "build", help="build a single-file image (rootfs, blueprint or debian)",
        description="Build an executable image with one compressed layer. The level is "
        "FIM_COMPRESSION_LEVEL (0-9, default 7). OUTPUT.sha256sum is written beside it.")
    kinds = p.add_subparsers(dest="build_kind", metavar="KIND", required=True)
    rootfs = kinds.add_parser(
        "rootfs", parents=[common], help="any root filesystem: a directory or a tarball",
        description="An image of a root filesystem: a directory (a chroot, an extracted OCI "
        "layer) or a tarball (.tar, .tar.gz, .tar.xz, .tar.bz2, .tar.zst; `docker export` "
        "output). The mount points a container needs are added; the source is not changed. "
        "FIM_DIST=ROOTFS.")
    rootfs.add_argument("source", metavar="DIR|TARBALL")
    rootfs.set_defaults(func=_rootfs)
    blueprint = kinds.add_parser(
        "blueprint", parents=[common], help="an empty root with static busybox and bash",
        description="An empty root with static busybox (and its applets) and bash, from "
        "Debian's busybox-static and bash-static. FIM_DIST=BLUEPRINT.")
    blueprint.set_defaults(func=_blueprint)
    debian = kinds.add_parser(
        "debian", parents=[common], help="a Debian root made with debootstrap (root only)",
        description="A Debian root installed with debootstrap. FIM_DIST=DEBIAN.")
    debian.add_argument("--suite", default="bookworm", help="Debian suite (default bookworm)")
    debian.add_argument("--variant", default="",
                        help="debootstrap variant, e.g. minbase (default: debootstrap's)")
    debian.add_argument("--mirror", help="Debian mirror URL (default: debootstrap's)")
    debian.set_defaults(func=_debian)


def _step(message: str) -> None:
    print(f"fim: {message}", file=sys.stderr, flush=True)


def _write_layer(root: str, layer: str, *, root_owned: bool) -> None:
    """The DwarFS layer of ``root``; ``root_owned`` stores every entry as 0:0."""
    from fim.app.progress import ProgressBar
    from fim.fimfs.dwarfs.options import WriteOptions
    from fim.fimfs.dwarfs.writer import write_image

    level = compression_level(os.environ)
    owner = 0 if root_owned else None
    _step(f"compressing {root} (level {level})")
    bar = ProgressBar() if sys.stderr.isatty() else None
    try:
        write_image(root, layer, WriteOptions(level=level, set_owner=owner, set_group=owner),
                    bar)
    finally:
        if bar:
            bar.close()


def _sha256sum(path: str) -> str:
    """Write ``path.sha256sum`` in sha256sum's format; the digest."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    with open(path + ".sha256sum", "w", encoding="utf-8") as f:
        f.write(f"{digest}  {os.path.basename(path)}\n")
    return digest


def _finish(args: argparse.Namespace, layer: str, dist: str) -> int:
    """Write the image around ``layer``, with the official recipe remote set as
    upstream's build does (spec 2.16), and its checksum file."""
    from fim.app import config, image
    from fim.cli.build import payload
    from fim.cli.commands.remote import OFFICIAL

    _step(f"making the {args.runtime} runtime")
    rt = payload.build(args.runtime)
    with files.replacing(args.output) as tmp:  # the image appears only once configured
        layout = image.create(tmp, rt.launcher, rt.payload, reserved_size=args.reserved_size,
                              layers=[layer], dist=dist)
        with config.edit(layout) as cfg:
            cfg.remote = OFFICIAL
    _sha256sum(args.output)
    size = os.path.getsize(args.output)
    print(f"{args.output}: {dist}, {size / (1 << 20):.1f} MiB "
          f"({len(rt.payload) / (1 << 20):.1f} MiB runtime), "
          f"{time.monotonic() - args.started:.1f} s")
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, make: Callable[[argparse.Namespace, str], int]) -> int:
    """Check OUTPUT's directory, then run ``make(args, work)`` in a temporary directory,
    removed afterwards (also on Ctrl-C and SIGTERM)."""
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise FimError(f"{out_dir}: no such directory")
    if os.path.isdir(args.output):
        raise FimError(f"{args.output}: is a directory")
    args.started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="fim-build-") as work:
            return make(args, work)
    except KeyboardInterrupt:
        raise FimError(f"interrupted: {args.output} not written", 130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _rootfs_in(args: argparse.Namespace, work: str) -> int:
    from fim.cli.build import rootfs

    source = args.source
    layer = os.path.join(work, "layer.dwarfs")
    if os.path.isdir(source):
        root = source
        if rootfs.missing_skeleton(source):
            root = os.path.join(work, "root")
            _step(f"copying {source} to add the container's mount points")
            rootfs.clone_tree(source, root)
            rootfs.add_skeleton(root)
        _write_layer(root, layer, root_owned=False)
    elif os.path.isfile(source):
        root = os.path.join(work, "root")
        os.mkdir(root, 0o755)
        _step(f"extracting {source}")
        rootfs.extract_tarball(source, root)
        rootfs.add_skeleton(root)
        # without root the owners were lost: the files belong to the container's root
        _write_layer(root, layer, root_owned=os.geteuid() != 0)
    else:
        raise FimError(f"{source}: no such directory or file")
    return _finish(args, layer, "ROOTFS")


def _blueprint_in(args: argparse.Namespace, work: str) -> int:
    from fim.cli.build import blueprint

    root = os.path.join(work, "root")
    os.mkdir(root, 0o755)
    blueprint.populate(root)
    layer = os.path.join(work, "layer.dwarfs")
    _write_layer(root, layer, root_owned=True)
    return _finish(args, layer, "BLUEPRINT")


def _debian_in(args: argparse.Namespace, work: str) -> int:
    from fim.cli.build import rootfs

    root = os.path.join(work, "root")
    variant = f" ({args.variant})" if args.variant else ""
    _step(f"installing Debian {args.suite}{variant} with debootstrap")
    rootfs.debootstrap(root, args.suite, args.variant, args.mirror)
    rootfs.add_skeleton(root)
    rootfs.add_apt_config(root)
    layer = os.path.join(work, "layer.dwarfs")
    _write_layer(root, layer, root_owned=False)
    return _finish(args, layer, "DEBIAN")


def _rootfs(args: argparse.Namespace) -> int:
    return _run(args, _rootfs_in)


def _blueprint(args: argparse.Namespace) -> int:
    return _run(args, _blueprint_in)


def _debian(args: argparse.Namespace) -> int:
    return _run(args, _debian_in)
