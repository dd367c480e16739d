"""`fim-layer create` and `fim-layer commit` (spec 2.10, 10.5; docs/layers.md).

`create` writes a directory as a DwarFS layer with the spec's input set (regular
files, symlinks, directories; devices, FIFOs, sockets and directories that cannot be
entered are left out). `commit` writes the upper directory ``DATA/root`` as the
container saw it: whiteouts and opaque directories included (a deletion survives the
commit), logical owners from ``user.fim.owner`` (fimfs.dwarfs.scan, ``upper=True``),
devices and FIFOs kept; only sockets and directories that cannot be entered stay
behind. xattrs other than the overlay's are not stored: DwarFS 2.5 has none.

Crash safety, in this order: the layer is written to ``DATA/tmp/layer.tmp`` (a
temporary name until complete, fsynced); then placed: appended to the image
(:func:`app.image.append_layer`: recorded only once its bytes are durable, a torn
append is ignored with a warning and overwritten by the next one) or linked under
its final name (a copy, fsync and link across filesystems: never a partial file under
that name); only then is the upper directory cleared. The clearing first removes a
directory's opacity, then what is in it, so after a kill at any instant the upper
holds a subset of the new layer's entries that hides nothing of it: the view is the
same, nothing is lost. A failure before the placement leaves image and upper as they
were (a full disk included).

Instances: a commit takes the run lock of the data directory exclusively or refuses
(:mod:`app.runlock`).
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys

from fim.app import log
from fim.app.log import CommandError

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from fim.app.session import Context

LEVEL_VARIABLE = "FIM_COMPRESSION_LEVEL"
DEFAULT_LEVEL = 7
TEMP_NAME = "layer.tmp"
MAX_LAYER = 999
_LAYER_NAME = re.compile(r"layer-(\d+)\.layer")
_COPY_CHUNK = 1 << 20


def compression_level(environ: Mapping[str, str]) -> int:
    """FIM_COMPRESSION_LEVEL: 0-9, default 7; not a number gives 7, others are clamped."""
    try:
        level = int(environ.get(LEVEL_VARIABLE, "").strip())
    except ValueError:
        return DEFAULT_LEVEL
    return min(9, max(0, level))


# -- building a layer --------------------------------------------------------------------
def _keeper(upper: bool, skipped: set[bytes],
            opened: list[tuple[bytes, int]]) -> Callable[[bytes, os.stat_result], bool]:
    """The scan's ``keep``: the spec's input set, with its messages; ``skipped``
    collects what is left out (a commit leaves it in the upper directory). In an upper
    directory, this user's files and directories that deny it reading (a ``chmod 000``
    in the container) are opened up for the scan; ``opened`` lists their modes."""
    wanted = ((stat.S_IFREG, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO)
              if upper else (stat.S_IFREG, stat.S_IFLNK))
    euid = os.geteuid()

    def keep(path: bytes, st: os.stat_result) -> bool:
        fmt = stat.S_IFMT(st.st_mode)
        if upper and euid and st.st_uid == euid and fmt in (stat.S_IFREG, stat.S_IFDIR):
            need = stat.S_IRUSR | (stat.S_IXUSR if fmt == stat.S_IFDIR else 0)
            if st.st_mode & need != need:
                try:
                    os.chmod(path, stat.S_IMODE(st.st_mode) | need)
                    opened.append((path, stat.S_IMODE(st.st_mode)))
                except OSError:
                    pass
        if fmt == stat.S_IFDIR:
            if os.access(path, os.R_OK | os.X_OK):
                return True
            log.info(f"Insufficient permissions to enter directory '{os.fsdecode(path)}'")
        elif fmt in wanted:
            return True
        else:
            log.info(f"Ignoring file '{os.fsdecode(path)}'")
        skipped.add(path)
        return False

    return keep


def build(source: str, output: str, *, upper: bool = False) -> set[bytes]:
    """Write ``source`` as a DwarFS layer to ``output`` with the spec's messages; the
    paths left out. ``upper``: ``source`` is an upper directory (module docstring)."""
    from fim.fimfs.dwarfs.options import WriteOptions
    from fim.fimfs.dwarfs.writer import write_image
    from fim.fimfs.errors import FimfsError

    log.info("Gathering files to compress...")
    if not os.path.lexists(source):
        raise CommandError(f"Source directory '{source}' does not exist")
    if not os.path.isdir(source):
        raise CommandError(f"Source '{source}' is not a directory")
    level = compression_level(os.environ)
    log.info(f"Compression level: '{level}'")
    log.info(f"Compress filesystem to '{output}'")
    skipped: set[bytes] = set()
    opened: list[tuple[bytes, int]] = []
    bar = None
    if sys.stderr.isatty():
        from fim.app.progress import ProgressBar

        bar = ProgressBar()
    try:
        write_image(source, output, WriteOptions(level=level), bar,
                    keep=_keeper(upper, skipped, opened), upper=upper)
    except FimfsError as exc:
        raise CommandError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
        for path, mode in reversed(opened):  # children first: their parents are open
            try:
                os.chmod(path, mode)
            except OSError:
                pass
    log.info("Filesystem created without errors")
    return skipped


def create(source: str, output: str) -> None:
    """`fim-layer create IN-DIR OUT-FILE`."""
    try:
        build(source, output)
    except CommandError as exc:
        raise CommandError(*exc.messages, "Failed to create layer") from None


# -- placing it --------------------------------------------------------------------------
def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_durable(src: str, dst: str) -> None:
    """Copy ``src`` to the new file ``dst`` and fsync it."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with open(src, "rb") as f:
            while chunk := f.read(_COPY_CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new(src: str, dst: str) -> None:
    """Give ``src`` the new name ``dst`` (never replacing a file there)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise CommandError("Destination file already exists") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dst):  # a filesystem without hard links: checked, then renamed
            raise CommandError("Destination file already exists") from None
        os.rename(src, dst)
        return
    os.unlink(src)


def place(tmp: str, dest: str) -> None:
    """Move the finished layer ``tmp`` to the new path ``dest``, durably; across
    filesystems by a copy (fsynced, under a temporary name) then a link."""
    directory = os.path.dirname(os.path.abspath(dest))
    try:
        try:
            _link_new(tmp, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            part = os.path.join(directory, f".{os.path.basename(dest)}.{os.getpid()}.part")
            try:
                _copy_durable(tmp, part)
                _link_new(part, dest)
            finally:
                if os.path.lexists(part):
                    os.unlink(part)
            os.unlink(tmp)
        _fsync_dir(directory)
    except OSError as exc:
        raise CommandError(f"Could not save the layer to '{dest}': {exc.strerror}") from None


def next_layer(layers_dir: str) -> tuple[int, str]:
    """The number and path of the next managed layer (spec 2.10, `commit layer`)."""
    try:
        names = os.listdir(layers_dir)
    except FileNotFoundError:
        names = []
    except OSError as exc:
        raise CommandError(f"Could not read '{layers_dir}': {exc.strerror}") from None
    numbers = [int(m.group(1)) for m in map(_LAYER_NAME.fullmatch, names) if m]
    number = max(numbers) + 1 if numbers else 0
    if number > MAX_LAYER:
        raise CommandError("Maximum number of layers exceeded")
    return number, os.path.join(layers_dir, f"layer-{number:03d}.layer")


# -- clearing the upper directory --------------------------------------------------------
def _remove(remove: Callable[[bytes], None], path: bytes, what: str) -> bool:
    try:
        remove(path)
        return True
    except OSError:
        log.warning(f"Could not remove {what} {os.fsdecode(path)}")
        return False


def _unopaque(path: bytes) -> bool:
    """Remove the opacity of the upper directory ``path``; False if it stays opaque."""
    from fim.fimfs import whiteout

    for name in whiteout.OPAQUE_XATTRS:
        try:
            os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue  # not set (or not visible to this user: not set by it either)
        try:
            os.removexattr(path, name, follow_symlinks=False)
        except OSError:
            log.warning(f"Could not remove the opaque mark of directory {os.fsdecode(path)}")
            return False
    marker = os.path.join(path, whiteout.OPAQUE_MARKER.encode())
    return not os.path.lexists(marker) or _remove(os.unlink, marker, "file")


def _clear_dir(path: bytes, skipped: set[bytes]) -> bool:
    """Remove what a commit stored from the upper directory ``path`` (opacity first);
    False when something there must stay (left out of the layer, or still opaque)."""
    if not _unopaque(path):
        return False
    try:
        st = os.lstat(path)
        if os.geteuid() and st.st_uid == os.geteuid() and st.st_mode & 0o700 != 0o700:
            os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)  # it goes: open it to empty it
        with os.scandir(path) as it:
            entries = [(de.path, de.is_dir(follow_symlinks=False)) for de in it]
    except OSError:
        log.warning(f"Could not remove directory {os.fsdecode(path)}")
        return False
    clean = True
    for child, is_dir in entries:
        if child in skipped:
            clean = False
        elif is_dir:
            if _clear_dir(child, skipped):
                _remove(os.rmdir, child, "directory")
            else:
                clean = False
        else:
            _remove(os.unlink, child, "file")
    return clean


def clear_upper(root: str, skipped: set[bytes]) -> None:
    """Empty the upper directory ``root`` but for ``skipped`` (the root itself stays)."""
    _clear_dir(os.fsencode(root), skipped)
    log.info("Finished erasing files")


# -- commit ------------------------------------------------------------------------------
def _clean_temp(tmp_dir: str) -> None:
    """Remove what an interrupted commit left in DATA/tmp (the writer's temporary)."""
    try:
        names = os.listdir(tmp_dir)
    except OSError:
        return
    for name in names:
        if name == TEMP_NAME or name.startswith(f".{TEMP_NAME}."):
            try:
                os.unlink(os.path.join(tmp_dir, name))
            except OSError:
                pass


def _destination(path: str) -> str:
    dest = os.path.abspath(path)
    if os.path.lexists(dest):
        raise CommandError("Destination file already exists")
    if not os.path.isdir(os.path.dirname(dest)):
        raise CommandError(f"The parent directory of '{dest}' does not exist")
    return dest


def commit(ctx: Context, mode: str, path: str | None = None) -> None:
    """`fim-layer commit binary|layer|file PATH` (``mode`` in upper case)."""
    try:
        _commit(ctx, mode, path)
    except CommandError as exc:
        raise CommandError(*exc.messages, "Failed to commit layer") from None


def _commit(ctx: Context, mode: str, path: str | None) -> None:
    from fim.app import image, runlock

    paths = ctx.paths
    root, tmp_dir = paths.upper, paths.tmp
    lock = runlock.exclusive(paths.data)
    try:
        dest = None
        if mode == "LAYER":
            number, dest = next_layer(paths.layers)
            log.info(f"Layer number: {number}")
            log.info(f"Layer path: {dest}")
        elif mode == "FILE":
            assert path is not None
            dest = _destination(path)
        _clean_temp(tmp_dir)
        tmp = os.path.join(tmp_dir, TEMP_NAME)
        skipped = build(root, tmp, upper=True)
        if dest is None:
            try:
                image.append_layer(ctx.layout, tmp)
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
            log.info(f"Included novel layer from file '{tmp}'")
            log.info("Filesystem appended to binary without errors")
        else:
            place(tmp, dest)
            log.info(f"Layer saved to '{dest}'")
        clear_upper(root, skipped)
    finally:
        os.close(lock)
