"""One adapter from any :class:`fimfs.vfs.Filesystem` to FUSE (mfusepy), and the mount lifecycle.

``mount`` serves a Filesystem on a directory, in the foreground (blocks until the mount
goes away) or as a detached daemon (returns once the mount answers). ``umount`` takes
it down again. mfusepy (and through it libfuse) is imported lazily, so importing this
package never fails on a machine without libfuse; only mounting does, with a one-line
:class:`FimfsError`.

The rooms, in the order a request meets them (docs/architecture.md, "The data path"):

* :mod:`.binding` - loading mfusepy/libfuse and the patched ``mfusepy.FUSE`` subclass
  (the only module that touches mfusepy or ctypes), and the one wrapper of every
  callback (errnos back to the kernel, EIO for a layer's bugs);
* :mod:`.adapter` - :class:`FuseOperations`, the operations object: attribute
  conversion, directory snapshots, no OPEN where reads go by path;
* :mod:`.aliases` - keeping the kernel's caches of an inode's other names coherent
  on writable mounts;
* :mod:`.options` - the ``-o`` options of a read-only or writable mount;
* :mod:`.mounttable` - the mount table and the pre-flight checks;
* :mod:`.lifecycle` - mount (foreground or daemon), umount, termination signals.
"""

from fim.fimfs.fuse.adapter import FuseOperations, attr_to_stat
from fim.fimfs.fuse.lifecycle import READY_TIMEOUT, FilesystemSource, mount, umount
from fim.fimfs.fuse.mounttable import check_mountpoint, is_mounted
from fim.fimfs.fuse.options import (
    MAX_THREADS,
    READ_AHEAD_KB,
    RO_CACHE_TIMEOUT,
    allow_other_permitted,
    mount_options,
)

__all__ = [
    "MAX_THREADS",
    "READ_AHEAD_KB",
    "READY_TIMEOUT",
    "RO_CACHE_TIMEOUT",
    "FilesystemSource",
    "FuseOperations",
    "allow_other_permitted",
    "attr_to_stat",
    "check_mountpoint",
    "is_mounted",
    "mount",
    "mount_options",
    "umount",
]
