"""A file at an HTTP(S) URL, read with range requests through a per-user block cache.

:class:`RemoteFile` has the interface of :class:`fimfs.dwarfs.sections.ImageFile`
(``size``, ``pread``, ``read_upto``, ``will_need``, ``close``), so the DwarFS reader
reads a layer given as a URL block by block, as it needs it. The file is cut into
chunks of :data:`CHUNK` bytes; a read fetches the chunks it lacks (one request per
contiguous run) and keeps them in a :class:`Cache` on disk (fimfs.remotecache), shared
by every image and process of the user, bounded, least recently used out first.

Identity: the first request (``Range: bytes=0-0``) gives the size and the validator
(ETag, else Last-Modified). Cached chunks are filed under URL + validator + size, and
every later response must carry the same validator and size, so a file changed on
the server is never mixed with blocks of the old one (a read that meets the change
fails with EIO). Without a validator nothing is cached on disk.

Failures: a server without range support is downloaded whole into the cache (a
progress bar on a TTY) when it fits, else one error line; an unreachable server
falls back to the last copy seen (an offline run of what was read before); a
connection lost mid-read is retried with backoff, then that read fails with EIO and
one log line (and, the server being unreachable, the next reads for DOWN_PAUSE
seconds fail at once). Timeouts bound every request: never a hang.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from .errors import FimfsError
from .remotecache import Cache, key_of

TYPE_CHECKING = False  # not typing's: `fim` and the boot import this module for is_url
if TYPE_CHECKING:
    import logging

    import urllib3

#: Bytes per cached chunk: what one read of a few bytes costs at most over the network.
CHUNK = 64 << 10
#: Attempts per range request (a lost connection, a truncated body, a 5xx answer).
ATTEMPTS = 4
#: Seconds before the second attempt; doubled for each next one.
BACKOFF = 0.25
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 15.0
#: After a read found the server unreachable (every attempt), how long other reads fail
#: at once rather than each waiting through its own attempts.
DOWN_PAUSE = 5.0
#: A fetch at least this long shows a progress bar when stderr is a terminal.
PROGRESS_BYTES = 8 << 20
_RETRY_STATUS = frozenset((408, 429, 500, 502, 503, 504))


class RemoteError(FimfsError):
    """A URL that cannot be read: not found, unreachable, refused (the message does not
    repeat the URL: the caller names it)."""


def _log() -> logging.Logger:
    import logging

    return logging.getLogger(__name__)


def is_url(path: object) -> bool:
    """Is ``path`` an ``http://`` or ``https://`` URL (rather than a file path)?"""
    return isinstance(path, str) and path.startswith(("http://", "https://"))



_pool_lock = threading.Lock()
_pools: dict[int, urllib3.PoolManager] = {}


def _pool() -> urllib3.PoolManager:
    """One connection pool per process (a forked mount daemon makes its own)."""
    import urllib3

    pid = os.getpid()
    with _pool_lock:
        pool = _pools.get(pid)
        if pool is None:
            retries = urllib3.Retry(total=2, connect=2, read=0, status=0, redirect=5,
                                    backoff_factor=BACKOFF)
            pool = urllib3.PoolManager(
                num_pools=8, maxsize=8, retries=retries,
                timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT))
            _pools.clear()
            _pools[pid] = pool
        return pool


def _ranges_retry() -> urllib3.Retry:
    """Range requests follow redirects only: their loop retries (the body included)."""
    import urllib3

    return urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)


def _reason(exc: BaseException) -> str:
    """One short line for a failed request."""
    import urllib3.exceptions as ux

    if isinstance(exc, ux.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    if isinstance(exc, ux.SSLError):
        return f"TLS error: {exc}"
    if isinstance(exc, ux.NewConnectionError):
        text = str(exc)
        return "cannot connect: " + text.rsplit(": ", 1)[-1]
    if isinstance(exc, ux.TimeoutError):
        return "timed out"
    if isinstance(exc, ux.ProtocolError | ux.IncompleteRead | ux.DecodeError):
        return "connection lost mid-transfer"
    return str(exc) or type(exc).__name__


def _offline(exc: BaseException) -> bool:
    """Could the server not be reached at all (as opposed to answering badly)?"""
    import urllib3.exceptions as ux

    if isinstance(exc, ux.MaxRetryError) and exc.reason is not None:
        exc = exc.reason
    return isinstance(exc, ux.NewConnectionError | ux.ConnectTimeoutError | ux.NameResolutionError)


class _Pending:
    """A chunk one thread is fetching: the others wait for its bytes (None: failed)."""

    __slots__ = ("_event", "data")

    def __init__(self) -> None:
        self._event = threading.Event()
        self.data: bytes | None = None

    def done(self, data: bytes | None) -> None:
        self.data = data
        self._event.set()

    def wait(self) -> bytes | None:
        self._event.wait()
        return self.data


class _Changed(Exception):
    """The remote file is no longer the one that was opened."""


class RemoteFile:
    """Positional, thread-safe reads of the file at ``url`` (see the module docstring)."""

    local = False

    def __init__(self, url: str, cache: Cache | None = None) -> None:
        self.url = url
        self.cache = Cache() if cache is None else cache
        self.offline = False
        self._inflight: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self.fetched = 0  # bytes received from the server by this object
        self._down_until = 0.0
        self.ranges = True  # False: the server ignores ranges (the file is all cached)
        ident = self._probe()
        self.size = int(ident["size"])  # type: ignore[call-overload]
        self.validator = str(ident.get("validator") or "")
        self._key = key_of(f"{url}\n{self.validator}\n{self.size}") if self.validator else ""

    # -- opening --------------------------------------------------------------------
    def _probe(self) -> dict[str, object]:
        """Size and validator from a one-byte range request; a server without range
        support is downloaded whole; an unreachable one falls back to the cache."""
        try:
            resp = _pool().request("GET", self.url, headers={"Range": "bytes=0-0"},
                                   preload_content=False)
        except Exception as exc:
            if not _is_http_error(exc):
                raise
            known = self.cache.recall(self.url)
            if known is None or not _offline(exc):
                raise RemoteError(_reason(exc)) from None
            self.offline = True
            _log().warning("%s: %s; reading the cached copy", self.url, _reason(exc))
            return known
        try:
            if resp.status == 206:
                size = _total(resp.headers.get("Content-Range", ""))
                if size is None:
                    raise RemoteError("malformed Content-Range "
                                      f"{resp.headers.get('Content-Range')!r}")
                resp.read()
                ident: dict[str, object] = {"size": size, "validator": _validator(resp)}
            elif resp.status == 200:
                ident = self._download_whole(resp)
            else:
                raise RemoteError(f"HTTP {resp.status} {resp.reason or ''}".rstrip())
        except Exception as exc:
            if not _is_http_error(exc):
                raise
            raise RemoteError(_reason(exc)) from None
        finally:
            resp.release_conn()
        if ident["validator"]:
            self.cache.remember(self.url, ident)
        else:
            _log().warning("%s: the server sends no ETag or Last-Modified: nothing is cached",
                        self.url)
        return ident

    def _download_whole(self, resp: urllib3.BaseHTTPResponse) -> dict[str, object]:
        """The server ignored the range: keep the whole body in the cache, if it fits."""
        length = resp.headers.get("Content-Length", "")
        validator = _validator(resp)
        why = "the server does not support range requests and sends no"
        if not validator:
            raise RemoteError(f"{why} ETag or Last-Modified")
        if not length.isdigit():
            raise RemoteError(f"{why} Content-Length")
        size = int(length)
        if size > self.cache.limit // 2:
            raise RemoteError("the server does not support range requests and "
                              f"the file ({size} bytes) is larger than half the cache "
                              f"({self.cache.limit} bytes, FIM_REMOTE_CACHE_SIZE)")
        key = key_of(f"{self.url}\n{validator}\n{size}")
        self.ranges = False
        if self.cache.holds(key, -(-size // CHUNK)):  # downloaded before (another run)
            resp.close()
            return {"size": size, "validator": validator}
        _log().info("%s: no range support on the server: downloading %d bytes", self.url, size)
        done = 0
        with progress(size, self.url) as advance:
            buf = bytearray()
            try:
                for piece in resp.stream(CHUNK):
                    buf += piece
                    while len(buf) >= CHUNK:
                        self.cache.put(key, done // CHUNK, bytes(buf[:CHUNK]))
                        del buf[:CHUNK]
                        done += CHUNK
                    advance(len(piece))
            except Exception as exc:
                if not _is_http_error(exc):
                    raise
                raise RemoteError(_reason(exc)) from None
            if buf:
                self.cache.put(key, done // CHUNK, bytes(buf))
                done += len(buf)
        if done != size:
            raise RemoteError(f"truncated body ({done} of {size} bytes)")
        self.fetched += done
        return {"size": size, "validator": validator}

    # -- reading --------------------------------------------------------------------
    def pread(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset``: an ImageError past the end, OSError(EIO)
        when the server cannot deliver them."""
        from .errors import ImageError

        if offset < 0 or offset + n > self.size:
            raise ImageError("truncated image (unexpected end of file)")
        return self.read_upto(offset, n)

    def read_upto(self, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` (fewer at the end of the file)."""
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        first, last = offset // CHUNK, (offset + n - 1) // CHUNK
        chunks = self._chunks(first, last)
        data = b"".join(chunks[i] for i in range(first, last + 1))
        start = offset - first * CHUNK
        return data[start:start + n]

    def will_need(self, offset: int, n: int) -> None:
        """Advice only (the reader's read-ahead of local files); nothing to do here."""

    def close(self) -> None:
        """Nothing to release: the connection pool is the process's."""

    def _chunks(self, first: int, last: int) -> dict[int, bytes]:
        """Chunks ``first..last``: from the cache, else fetched (each chunk by one
        thread at a time; the others wait for it and take what it got)."""
        have: dict[int, bytes] = {}
        for _ in range(2):
            mine: list[int] = []
            theirs: list[tuple[int, _Pending]] = []
            for i in range(first, last + 1):
                if i in have:
                    continue
                data = self.cache.get(self._key, i) if self._key else None
                if data is not None:
                    have[i] = data
                    continue
                with self._lock:
                    pending = self._inflight.get(i)
                    if pending is None:
                        self._inflight[i] = _Pending()
                        mine.append(i)
                    else:
                        theirs.append((i, pending))
            try:
                for start, stop in _runs(mine):
                    have.update(self._fetch(start, stop))
            finally:
                with self._lock:
                    for i in mine:
                        self._inflight.pop(i).done(have.get(i))
            for i, pending in theirs:
                data = pending.wait()
                if data is not None:
                    have[i] = data
            if len(have) == last - first + 1:
                return have
        raise self._eio("a part another reader was fetching failed")

    def _fetch(self, first: int, last: int) -> dict[int, bytes]:
        """Chunks ``first..last`` from the server, stored in the cache."""
        start = first * CHUNK
        stop = min(self.size, (last + 1) * CHUNK)
        if self.offline:
            raise self._eio("offline, and this part was never fetched")
        if not self.ranges:
            raise self._eio("the server does not support range requests, and this part "
                            "left the cache")
        body = self._get_range(start, stop)
        out = {}
        for i in range(first, last + 1):
            data = body[(i - first) * CHUNK:(i - first + 1) * CHUNK]
            out[i] = data
            if self._key:
                self.cache.put(self._key, i, data)
        return out

    def copy_to(self, fd: int, piece: int = 8 << 20) -> None:
        """Write the whole file to ``fd`` (from offset 0), by ranges of ``piece`` bytes,
        bypassing the cache; a progress bar on a terminal."""
        with progress(self.size, self.url) as advance:
            for start in range(0, self.size, piece):
                data = self.fetch_range(start, min(self.size, start + piece), advance)
                view = memoryview(data)
                pos = start
                while view:
                    n = os.pwrite(fd, view, pos)
                    view, pos = view[n:], pos + n

    def fetch_range(self, start: int, stop: int,
                    report: Callable[[int], None] | None = None) -> bytes:
        """Bytes ``[start, stop)`` straight from the server (no cache): for a caller
        that streams a large part once (a delta update); ``report(n)`` as bytes come.
        From the cache when the server does not support ranges (downloaded whole)."""
        if not self.ranges:
            data = self.read_upto(start, stop - start)
            if report is not None:
                report(len(data))
            return data
        return self._get_range(start, stop, report)

    def _get_range(self, start: int, stop: int,
                   report: Callable[[int], None] | None = None) -> bytes:
        """One range request with its own retries (the body too: a connection lost
        mid-transfer is retried from the start of the range)."""
        headers = {"Range": f"bytes={start}-{stop - 1}"}
        reason = ""
        down = self._down_until - time.monotonic()
        if down > 0:  # the last reads found the server gone: fail fast for a while
            raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} ({self.url}: unreachable, "
                                     f"next attempt in {down:.0f} s)")
        for attempt in range(ATTEMPTS):
            if attempt:
                time.sleep(BACKOFF * (1 << (attempt - 1)))
            try:
                body = self._request(headers, start, stop, report)
            except _Changed as exc:
                raise self._eio(str(exc)) from None
            except RemoteError:
                raise
            except Exception as exc:
                if not _is_http_error(exc):
                    raise
                reason = _reason(exc)
                if _offline(exc) and attempt == ATTEMPTS - 1:
                    self._down_until = time.monotonic() + DOWN_PAUSE
                continue
            if body is None:
                reason = "server error"
                continue
            self.fetched += len(body)
            return body
        raise self._eio(f"{reason} (after {ATTEMPTS} attempts)")

    def _request(self, headers: dict[str, str], start: int, stop: int,
                 report: Callable[[int], None] | None) -> bytes | None:
        resp = _pool().request("GET", self.url, headers=headers, preload_content=False,
                               retries=_ranges_retry())
        try:
            if resp.status in _RETRY_STATUS:
                resp.drain_conn()
                return None
            if resp.status != 206:
                raise _Changed(f"HTTP {resp.status} to a range request "
                               "(the file changed or moved on the server?)")
            if _total(resp.headers.get("Content-Range", "")) != self.size or (
                    self.validator and _validator(resp) != self.validator):
                raise _Changed("the file changed on the server since it was opened")
            want = stop - start
            with progress(want if report is None else 0, self.url) as advance:
                parts = []
                got = 0
                for piece in resp.stream(CHUNK * 4):
                    parts.append(piece)
                    got += len(piece)
                    advance(len(piece))
                    if report is not None:
                        report(len(piece))
            if got != want:
                import urllib3.exceptions as ux

                raise ux.IncompleteRead(got, want - got)
            return b"".join(parts)
        finally:
            resp.release_conn()

    def _eio(self, why: str) -> OSError:
        _log().error("%s: read failed: %s", self.url, why)
        return OSError(errno.EIO, f"{os.strerror(errno.EIO)} ({self.url}: {why})")


def get(url: str, limit: int) -> bytes:
    """The whole body at ``url`` (a small file: a checksum), at most ``limit`` bytes;
    a RemoteError with one line otherwise."""
    try:
        resp = _pool().request("GET", url, preload_content=False)
    except Exception as exc:
        if not _is_http_error(exc):
            raise
        raise RemoteError(_reason(exc)) from None
    try:
        if resp.status != 200:
            raise RemoteError(f"HTTP {resp.status} {resp.reason or ''}".rstrip())
        body = resp.read(limit + 1)
    except RemoteError:
        raise
    except Exception as exc:
        if not _is_http_error(exc):
            raise
        raise RemoteError(_reason(exc)) from None
    finally:
        resp.release_conn()
    if len(body) > limit:
        raise RemoteError(f"larger than {limit} bytes")
    return body


def _is_http_error(exc: BaseException) -> bool:
    import urllib3.exceptions as ux

    return isinstance(exc, ux.HTTPError | OSError)


def _validator(resp: urllib3.BaseHTTPResponse) -> str:
    etag = resp.headers.get("ETag", "")
    if etag:
        return "etag:" + etag
    modified = resp.headers.get("Last-Modified", "")
    return "modified:" + modified if modified else ""


def _total(content_range: str) -> int | None:
    """The full size in ``bytes A-B/SIZE``; None when absent or malformed."""
    unit, _, rest = content_range.partition(" ")
    total = rest.rpartition("/")[2]
    return int(total) if unit == "bytes" and total.isdigit() else None


def _runs(indices: list[int]) -> Iterator[tuple[int, int]]:
    """Contiguous runs of sorted ``indices`` as (first, last)."""
    run: list[int] = []
    for i in indices:
        if run and i != run[-1] + 1:
            yield run[0], run[-1]
            run = []
        run.append(i)
    if run:
        yield run[0], run[-1]


class progress:
    """A tqdm bar on stderr for a fetch of at least PROGRESS_BYTES, on a terminal only;
    ``with progress(total, name) as advance: advance(n)``."""

    def __init__(self, total: int, name: str) -> None:
        self._bar = None
        if total >= PROGRESS_BYTES and sys.stderr is not None and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                             desc=os.path.basename(name.rstrip("/")) or name, leave=False)

    def __enter__(self) -> Callable[[int], None]:
        bar = self._bar
        return (lambda n: None) if bar is None else bar.update

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
