"""Progressive zstd decoding straight into a block's buffer, through the system libzstd.

A reader that needs the first bytes of a 16 MiB block should not wait for the whole
block, and a random read should not decode past what it needs; native dwarfs decodes
blocks only as far as asked for. python-zstandard cannot do that without a second
window per block (its streaming decoder copies out of its own buffer), so this calls
libzstd with ``ZSTD_d_stableOutBuffer``: the block's buffer is the window, and how
much compressed input is handed over bounds how far a call decodes. The buffer is an
anonymous mapping, so the part not decoded yet costs no memory, and a block left half
decoded holds no compressed input either (it is read again from the image).

Optional: :func:`available` is False where libzstd.so.1 cannot be loaded, and blocks
are then decompressed whole by python-zstandard (codecs.decompress).
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import threading
from collections.abc import Callable

from ..errors import ImageError

#: Compressed bytes handed to one decoding call: about 1 MiB of output at -l7, which is
#: how finely a reader waiting for the start of a block sees it arrive (finer steps
#: cost more calls: 64 KiB made a block 10 % slower to decode than whole).
STEP = 256 << 10
#: Compressed bytes read again at a time by a decoder that released its input.
REFILL = 1 << 20
_STABLE_OUT_BUFFER = 1001  # ZSTD_d_stableOutBuffer (ZSTD_d_experimentalParam2)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # Linux 5.14


class _InBuffer(ctypes.Structure):
    _fields_ = [("src", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


class _OutBuffer(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


_lib: ctypes.CDLL | None = None
_loaded = False
_load_lock = threading.Lock()


def _library() -> ctypes.CDLL | None:
    global _lib, _loaded
    with _load_lock:
        if not _loaded:
            _loaded = True
            _lib = _bind()
    return _lib


def _bind() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL("libzstd.so.1")
        if lib.ZSTD_versionNumber() < 10405:  # stableOutBuffer is sound from 1.4.5 on
            return None
    except (OSError, AttributeError):
        return None
    lib.ZSTD_createDCtx.restype = ctypes.c_void_p
    lib.ZSTD_freeDCtx.argtypes = [ctypes.c_void_p]
    lib.ZSTD_DCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ZSTD_DCtx_setParameter.restype = ctypes.c_size_t
    lib.ZSTD_decompressStream.argtypes = [ctypes.c_void_p, ctypes.POINTER(_OutBuffer),
                                          ctypes.POINTER(_InBuffer)]
    lib.ZSTD_decompressStream.restype = ctypes.c_size_t
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.argtypes = [ctypes.c_size_t]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    return lib


def _map_in(address: int, length: int) -> None:
    """Back a buffer that will be written whole with huge pages, mapped in at once: a
    16 MiB block then decodes in 21.5 ms instead of 25.7 (a fault per 4 KiB page) or
    26 (python-zstandard's one-shot call), measured on bench/corpus.py's blocks alone.
    Through libc, not ``mmap.madvise``, which holds the GIL for the ~3 ms the pages
    take to map in: every request of the mount waited that long, at each block the
    prefetch began. Advice only: a kernel without MADV_POPULATE_WRITE (Linux 5.14)
    faults the pages in."""
    madvise = _madvise()
    if madvise is not None:
        madvise(address, length, mmap.MADV_HUGEPAGE)
        madvise(address, length, _MADV_POPULATE_WRITE)


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    try:
        madvise = ctypes.CDLL(None).madvise  # libc's, in the process already
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def available() -> bool:
    """Whether progressive decoding can be used here (libzstd.so.1 loads)."""
    return _library() is not None


class StreamDecoder:
    """One zstd frame of ``size`` bytes (its announced content size), decoded on demand.

    :attr:`data` is the output (a ctypes char array over an anonymous mapping: it can
    be sliced, and handed to ``ctypes.memmove``); its first :attr:`done` bytes are final.
    :meth:`advance` is not reentrant: one thread at a time (the reader's block lock).
    """

    def __init__(self, payload: bytes, size: int, read: Callable[[int, int], bytes],
                 whole: bool = False, length: int | None = None) -> None:
        """``payload``: the whole compressed frame (already read, to verify it), or its
        first bytes when ``length`` gives the frame's length (an image read over the
        network fetches only as much as decoding needs); ``read(offset, n)``: bytes of
        the frame (up to ``n``; the rest, or again once :meth:`release_input` dropped
        them); ``whole``: it will be decoded to the end (its memory is mapped in at
        once, see :func:`_map_in`)."""
        lib = _library()
        if lib is None:
            raise RuntimeError("libzstd is not available")
        self._lib = lib
        self.size = size
        self._mm = mmap.mmap(-1, max(size, 1))
        self.data: ctypes.Array[ctypes.c_char] = (ctypes.c_char * size).from_buffer(self._mm)
        if whole:
            _map_in(ctypes.addressof(self.data), size)
        self._read = read
        self._length = len(payload) if length is None else length
        self._chunk: bytes | None = None  # the input being handed over
        self._chunk_at = 0  # where it starts in the frame
        self._in = _InBuffer(None, 0, 0)
        self._take(payload)
        self._out = _OutBuffer(ctypes.addressof(self.data), size, 0)
        self._dctx = lib.ZSTD_createDCtx()
        if not self._dctx:
            raise MemoryError("ZSTD_createDCtx failed")
        self._check(lib.ZSTD_DCtx_setParameter(self._dctx, _STABLE_OUT_BUFFER, 1))

    @property
    def done(self) -> int:
        return self._out.pos

    def advance(self, target: int) -> int:
        """Decode until at least ``target`` bytes (or all) are done; returns done."""
        lib, inp, out = self._lib, self._in, self._out
        while out.pos < min(target, self.size):
            if not self._dctx:
                raise ImageError("zstd: frame ended early")
            if self._chunk is None or inp.pos == len(self._chunk):
                self._refill()
            inp.size = min(len(self._chunk or b""), inp.size + STEP)
            before = (inp.pos, out.pos)
            left = self._check(lib.ZSTD_decompressStream(self._dctx, ctypes.byref(out),
                                                         ctypes.byref(inp)))
            if (inp.pos, out.pos) == before:  # never with output room: a hostile frame
                self._finish()
                raise ImageError("zstd: the decoder made no progress")
            if left == 0:  # the frame is complete
                self._finish()
                if out.pos != self.size:
                    raise ImageError(f"zstd: size mismatch ({out.pos} != {self.size})")
        if out.pos >= self.size:
            self._finish()
        return out.pos

    def release_input(self) -> None:
        """Drop the compressed bytes held (a block left half decoded keeps none of its
        input; :meth:`advance` reads the rest again when asked for more)."""
        if self._chunk is not None:
            self._chunk_at += self._in.pos
            self._chunk = None
            self._in.pos = self._in.size = 0

    def _refill(self) -> None:
        if self._chunk is not None:
            self._chunk_at += len(self._chunk)
        if self._chunk_at >= self._length:
            self._finish()
            raise ImageError("zstd: truncated frame")
        self._take(self._read(self._chunk_at, min(REFILL, self._length - self._chunk_at)))

    def _take(self, chunk: bytes) -> None:
        self._chunk = chunk
        self._in.src = ctypes.cast(ctypes.c_char_p(chunk), ctypes.c_void_p)
        self._in.pos = self._in.size = 0

    def _check(self, ret: int) -> int:
        if self._lib.ZSTD_isError(ret):
            name = self._lib.ZSTD_getErrorName(ret).decode(errors="replace")
            self._finish()
            raise ImageError(f"zstd: corrupt data ({name})")
        return ret

    def _finish(self) -> None:
        """Free the decoding context and the input (the output stays)."""
        if getattr(self, "_dctx", None):  # (also from __del__ of a half-made one)
            self._lib.ZSTD_freeDCtx(self._dctx)
            self._dctx = None
        self._chunk = None

    def __del__(self) -> None:
        self._finish()
