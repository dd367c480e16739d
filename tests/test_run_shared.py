"""Runs of an image share its mount (cli.sharing, fimfs.linger; issue 24): real images,
real bwrap, as root and as an unprivileged user.

tests.containers.image_mounts lists the mounts whose source is the runner's image; a
mount is told apart from a later one by its daemon's pid (the kernel reuses mount ids).
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time

from fim.fimfs.linger import LINGER
from tests.containers import Runner, image_mounts, image_pid, kill_group, wait_for

READY = "echo ready; "


def _start(runner: Runner, command: str, *, root: bool = False) -> subprocess.Popen[str]:
    proc = runner.start("fim-root" if root else "fim-exec", "sh", "-c", READY + command)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc
    return proc


def _gone(runner: Runner) -> bool:
    return not image_mounts(runner.app)


def _daemons(runner: Runner) -> set[int]:
    """The pids serving the image's mounts (the peer of each slot's socket)."""
    pids = set()
    for mountpoint in image_mounts(runner.app).values():
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(os.path.join(os.path.dirname(mountpoint), "socket"))
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            pids.add(struct.unpack("3i", cred)[0])
    return pids


def test_two_runs_at_once_share_one_mount_and_survive_a_kill(runner: Runner) -> None:
    """kill -9 of the first run while the second runs: the second keeps working, the
    mount ends after both."""
    first = _start(runner, "sleep 60")
    second = None
    try:
        mounts = image_mounts(runner.app)
        assert len(mounts) == 1, mounts
        second = _start(runner, "sleep 2; ls /bin > /dev/null && echo x > /after && "
                        "echo alive")
        assert image_mounts(runner.app) == mounts
        os.kill(image_pid(first), signal.SIGKILL)
        out, err = second.communicate(timeout=60)
        assert (second.returncode, out) == (0, "alive\n"), err
        assert (runner.data / "root" / "after").read_text() == "x\n"
    finally:
        kill_group(first)
        if second is not None:
            kill_group(second)
    assert wait_for(lambda: _gone(runner), timeout=LINGER + 3), image_mounts(runner.app)


def test_a_run_within_the_linger_reuses_the_mount_then_it_ends(runner: Runner) -> None:
    runner.ok("fim-exec", "true")
    kept = _daemons(runner)
    assert len(kept) == 1
    proc = _start(runner, "cat /bin/sh > /dev/null; sleep 0.5")
    try:
        assert _daemons(runner) == kept
        assert proc.communicate(timeout=60)[0] == ""
    finally:
        kill_group(proc)
    start = time.monotonic()
    assert wait_for(lambda: _gone(runner), timeout=LINGER + 3)
    assert time.monotonic() - start > LINGER / 2, "gone before the linger"
    runner.ok("fim-exec", "true")  # and a new one is made afterwards
    assert _daemons(runner) and not _daemons(runner) & kept


def test_root_mode_gets_its_own_mount_unless_identical(runner: Runner) -> None:
    """A normal user's fim-root mount stores new files as root: never their fim-exec
    one. For host root both are the same mount (no owner mapping)."""
    user = _start(runner, "sleep 60")
    root = None
    try:
        root = _start(runner, "sleep 60", root=True)
        assert len(image_mounts(runner.app)) == (1 if runner.who == "root" else 2)
    finally:
        kill_group(user)
        if root is not None:
            kill_group(root)
    assert wait_for(lambda: _gone(runner), timeout=LINGER + 3)


def test_a_changed_image_is_not_served_by_a_lingering_mount(runner: Runner) -> None:
    """fim-layer commit and fim-layer add right after a run: the next run sees the new
    layers, through a new mount."""
    runner.ok("fim-root", "sh", "-c", "echo committed > /note")
    old = _daemons(runner)
    runner.ok("fim-layer", "commit", "binary")
    assert not any((runner.data / "root").iterdir())
    assert runner.ok("fim-exec", "cat", "/note") == "committed\n"
    assert not _daemons(runner) & old
    built = runner.workspace / "tree"
    built.mkdir()
    (built / "added").write_text("added\n")
    os.chown(built, runner.uid, runner.gid)
    os.chown(built / "added", runner.uid, runner.gid)
    runner.ok("fim-layer", "create", str(built), str(runner.workspace / "added.layer"))
    old = _daemons(runner)
    runner.ok("fim-layer", "add", str(runner.workspace / "added.layer"))
    assert runner.ok("fim-exec", "cat", "/added") == "added\n"
    assert _daemons(runner) - old  # the old one may linger, unused


def test_a_lingering_mount_whose_upper_is_removed_still_ends(runner: Runner) -> None:
    """The data directory removed while the mount lingers (its root now answers ENOENT):
    the keeper still finds and ends its mount."""
    runner.ok("fim-exec", "true")
    assert image_mounts(runner.app)
    subprocess.run(["rm", "-rf", str(runner.data)], check=True)
    assert wait_for(lambda: _gone(runner), timeout=LINGER + 3), image_mounts(runner.app)


def test_a_lingering_mount_whose_runtime_dir_is_removed_still_ends(runner: Runner) -> None:
    """The runtime directory removed while the mount lingers (rm -rf --one-file-system
    takes the slot's lock, socket and log, not the mount point): the mount still ends."""
    runner.ok("fim-exec", "true")
    (mountpoint,) = image_mounts(runner.app).values()
    app_dir = os.path.dirname(os.path.dirname(os.path.dirname(mountpoint)))
    subprocess.run(["rm", "-rf", "--one-file-system", app_dir], check=False)
    assert wait_for(lambda: _gone(runner), timeout=LINGER + 3), image_mounts(runner.app)
