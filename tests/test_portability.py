"""The pure parts of running on any host: where an image keeps its data (app.datadir),
the extraction cache (app.extractcache), which bwrap, and the one-line explanations.
The end-to-end host matrix is tests/test_hosts.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fim.app import datadir


def test_beside_when_writable(tmp_path: Path) -> None:
    image = str(tmp_path / "app.flatimage")
    assert datadir.locate(image, {"HOME": "/nowhere"}) == (
        str(tmp_path / ".app.flatimage.data"), False)
    assert datadir.locate(image, {"FIM_DIR_DATA": "/given"}) == ("/given", False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write a mode 0555 directory")
def test_per_user_when_not_writable(tmp_path: Path) -> None:
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    shelf.chmod(0o555)
    image = str(shelf / "app.flatimage")
    found, fallback = datadir.locate(image, {"XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert fallback and found.startswith(f"{tmp_path}/xdg/fim/app.flatimage-")


def test_per_user_keyed_by_image() -> None:
    env = {"HOME": "/home/u"}
    a = datadir.per_user("/media/cd/app.flatimage", env)
    b = datadir.per_user("/media/usb/app.flatimage", env)
    assert a != b and a.startswith("/home/u/.local/share/fim/app.flatimage-")
    assert a == datadir.per_user("/media/cd/app.flatimage", env)
    assert datadir.per_user("/x/a", {"XDG_DATA_HOME": "/d", "HOME": "/h"}).startswith("/d/fim/")


def test_remove_work_with_mode_000_dirs(tmp_path: Path) -> None:
    work = tmp_path / "work" / "123"
    (work / "work" / "index").mkdir(parents=True)
    (work / "work" / "index" / "f").write_text("x")
    (work / "work" / "index").chmod(0)
    (work / "work").chmod(0)
    datadir.remove_work(str(work))
    assert not work.exists()


def test_prune_work_keeps_live_runs(tmp_path: Path) -> None:
    for name in (str(os.getpid()), "999999999", "notapid"):
        (tmp_path / "work" / name).mkdir(parents=True)
    datadir.prune_work(str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == sorted(
        ["notapid", str(os.getpid())])


def test_host_bwrap_only_under_apparmor_restriction() -> None:
    """Ubuntu's AppArmor allows user namespaces to /usr/bin/bwrap only (mocked: this
    host has no AppArmor)."""
    from fim.app import hostmount

    restricted = {hostmount.APPARMOR_USERNS: "1"}.get
    assert hostmount.host_bwrap(0, restricted) is None
    assert hostmount.host_bwrap(1000, lambda _p: None) is None
    assert hostmount.host_bwrap(1000, {hostmount.APPARMOR_USERNS: "0"}.get) is None
    expected = hostmount.HOST_BWRAP if os.access(hostmount.HOST_BWRAP, os.X_OK) else None
    assert hostmount.host_bwrap(1000, restricted) == expected


def test_explain_blocked_user_namespaces() -> None:
    from fim.sandbox.bwrap import USERNS_BLOCKED, explain_failure

    nothing = lambda _p: None  # noqa: E731
    assert explain_failure(1000, nothing, can_unshare=lambda: False) == USERNS_BLOCKED
    assert "chroot" in USERNS_BLOCKED
    assert "line above" in explain_failure(1000, nothing, can_unshare=lambda: True)
    assert "line above" in explain_failure(0, nothing, can_unshare=lambda: False)


def test_extract_cache_prunes_least_recently_used(tmp_path: Path) -> None:
    from fim.app import extractcache

    for age, key in enumerate(("old", "mid", "new")):
        (tmp_path / key / "d").mkdir(parents=True)
        (tmp_path / key / "d").chmod(0)  # extracted modes may deny their owner
        (tmp_path / f"{key}.size").write_text("100")
        (tmp_path / f"{key}.lock").touch()
        os.utime(tmp_path / f"{key}.lock", (1000 + age, 1000 + age))
    extractcache._prune(str(tmp_path), 150, keep="x")
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["new"]


def test_extract_cache_digest(tmp_path: Path) -> None:
    from fim.app import extractcache

    f = tmp_path / "f"
    f.write_bytes(b"head" + b"layer" + b"tail")
    assert extractcache.digest(str(f), 4, 5) == extractcache.digest(str(f), 4, 5)
    assert extractcache.digest(str(f), 4, 5) != extractcache.digest(str(f), 4, 4)
    with pytest.raises(OSError):
        extractcache.digest(str(f), 4, 50)


def test_extract_cache_digest_of_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       ) -> None:
    """A layer given as a URL has the digest of its bytes (python's http.server, no
    range support: read whole through the per-user block cache)."""
    import functools
    import http.server
    import threading

    from fim.app import extractcache

    (tmp_path / "www").mkdir()
    f = tmp_path / "www" / "layer"
    f.write_bytes(os.urandom(300_000))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/layer"
        assert extractcache.digest(url, 1000, 200_000) == extractcache.digest(
            str(f), 1000, 200_000)
    finally:
        server.shutdown()
