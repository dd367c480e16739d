"""Attacks on shared mounts (app.sharing, fimfs.linger; issue 24), each run for real and
expected to fail: a program in a sandbox reaching the slots, a run served a mount of
other contents or of another user, a killed or planted slot, a lingering daemon holding
what the run was given. Real images, real bwrap, as root and as an unprivileged user.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fim.app.runlock import LOCK_NAME
from fim.fimfs.linger import LINGER
from fim.osutil.files import remove_tree
from tests.containers import (
    Runner,
    image_mounts,
    kill_group,
    remove_workspace,
    wait_for,
    workspace_runner,
)
from tests.test_run_shared import _daemons, _gone, _start


def _slot(runner: Runner) -> str:
    """The slot directory of the image's one mount (up or lingering)."""
    mounts = list(image_mounts(runner.app).values())
    assert len(mounts) == 1, mounts
    return os.path.dirname(mounts[0])


def _same_size_layers(directory: Path) -> tuple[Path, Path]:
    """Two layers of the same size whose /note differ ('A'*64, 'B'*64)."""
    made = []
    for letter in "AB":
        tree = directory / f"tree{letter}"
        tree.mkdir()
        (tree / "note").write_text(letter * 64 + "\n")
        for path in (tree / "note", tree):
            os.utime(path, (1_600_000_000, 1_600_000_000))
        out = directory / f"{letter}.layer"
        subprocess.run([sys.executable, "-m", "fim.cli.fim", "create", str(tree), str(out)],
                       check=True, capture_output=True, timeout=120)
        made.append(out)
    assert made[0].stat().st_size == made[1].stat().st_size
    return made[0], made[1]


def test_the_sandbox_reaches_no_slot(runner: Runner) -> None:
    """The slots (sockets, mount points) are in APP/mounts: nothing of it is bound into
    a sandbox, so a program inside can neither hold a lease nor plant a socket."""
    first = _start(runner, "sleep 60")
    try:
        socket_path = os.path.join(_slot(runner), "socket")
        out = runner.ok("fim-exec", "sh", "-c",
                        f'ls -d "$FIM_DIR_APP/mounts" {socket_path} 2>/dev/null; '
                        'find / -xdev -type s 2>/dev/null; echo end')
        assert out == "end\n"
    finally:
        kill_group(first)


def test_a_layer_rewritten_in_place_gets_a_new_mount(runner: Runner) -> None:
    """A layer file rewritten in place with the same size, its mtime put back (touch -r,
    rsync --inplace -t): the next run sees the new contents, not the lingering mount."""
    a, b = _same_size_layers(runner.workspace)
    layer = runner.file("ext.layer")
    shutil.copyfile(a, layer)
    env = {"FIM_LAYERS": str(layer)}
    first = runner.start("fim-exec", "sh", "-c", "cut -c1-3 /note; sleep 60", env=env)
    try:
        assert first.stdout is not None and first.stdout.readline() == "AAA\n"
        before = layer.stat()
        with open(layer, "r+b") as f:
            f.write(b.read_bytes())
        os.utime(layer, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = layer.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino, before.st_size, before.st_mtime_ns)
        assert runner.ok("fim-exec", "cut", "-c1-3", "/note", env=env) == "BBB\n"
    finally:
        kill_group(first)


def test_a_copy_or_a_link_of_the_image_gets_its_own_upper(runner: Runner) -> None:
    """A copy (same contents, same mtime) and a hard link (same file) of a running image
    are other images: their runs never see what the running one wrote."""
    first = _start(runner, "echo secret > /secret; sleep 60")
    try:
        assert wait_for(lambda: (runner.data / "root" / "secret").exists())
        for name in ("copy.flatimage", "link.flatimage"):
            other = runner.workspace / name
            if name.startswith("copy"):
                shutil.copy2(runner.app, other)
            else:
                os.link(runner.app, other)
            os.chown(other, runner.uid, runner.gid, follow_symlinks=False)
            argv = [str(other) if a == str(runner.app) else a
                    for a in runner.argv(("fim-exec", "sh", "-c", "ls /secret; echo end"),
                                         None)]
            proc = subprocess.run(argv, capture_output=True, text=True,
                                  cwd=runner.workspace, timeout=120)
            assert (proc.returncode, proc.stdout) == (0, "end\n"), proc
    finally:
        kill_group(first)


def _as_root(runner: Runner, home: str, *args: str) -> list[str]:
    """The command line running the user's image as host root (with a home of its own)."""
    argv = runner.argv(args, {"HOME": home, "USER": "root"})
    return argv[argv.index("env"):]


def _root_id(runner: Runner, home: str | None) -> str:
    """``user_id=`` of the mount the run's / is: whose daemon serves it (``home``: run
    as host root)."""
    args = ("fim-exec", "grep", " / ", "/proc/self/mountinfo")
    argv = runner.argv(args, None) if home is None else _as_root(runner, home, *args)
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=runner.workspace,
                          timeout=120)
    assert proc.returncode == 0, proc
    found = re.search(r"user_id=(\d+)", proc.stdout)
    assert found is not None, proc.stdout
    return found.group(1)


def test_root_and_a_user_never_share_a_mount(blueprint: Path) -> None:
    """Host root running a user's image while the user's mount is up gets a mount of its
    own, and the reverse (each has its own slots; every attach checks the daemon's uid)."""
    if os.geteuid() != 0:
        pytest.skip("runs the image as root and as the test user")
    runner = workspace_runner("user", blueprint)
    home = tempfile.mkdtemp(prefix="fim-home-")
    try:
        user = _start(runner, "sleep 60")
        try:
            assert _root_id(runner, home) == "0"
        finally:
            kill_group(user)
        assert wait_for(lambda: _gone(runner), timeout=LINGER + 3)
        root = subprocess.Popen(_as_root(runner, home, "fim-exec", "sleep", "60"),
                                cwd=runner.workspace, start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert wait_for(lambda: image_mounts(runner.app), timeout=30)
            assert _root_id(runner, None) == str(runner.uid)
        finally:
            kill_group(root)
    finally:
        remove_workspace(runner)
        shutil.rmtree(home)


def test_a_killed_mount_daemon_is_replaced(runner: Runner) -> None:
    """kill -9 of the daemon serving a run: the next run clears the slot and mounts
    anew (the dead mount is detached), then everything ends within the linger."""
    runner.ok("fim-exec", "sh", "-c", "echo kept > /mark")
    first = _start(runner, "sleep 60")
    try:
        (daemon,) = _daemons(runner)
        os.kill(daemon, signal.SIGKILL)
        assert wait_for(lambda: not os.path.exists(f"/proc/{daemon}"))
        assert runner.ok("fim-exec", "cat", "/mark") == "kept\n"
        assert daemon not in _daemons(runner)
    finally:
        kill_group(first)
    assert wait_for(lambda: _gone(runner), timeout=LINGER + 3), image_mounts(runner.app)


def test_a_stopped_daemon_is_replaced_and_leaves_its_successor_alone(runner: Runner
                                                                      ) -> None:
    """A daemon that does not answer (SIGSTOP) is replaced after the attach timeout;
    resumed, its keeper removes neither the new socket nor the new mount."""
    runner.ok("fim-exec", "sh", "-c", "echo kept > /mark")
    (old,) = _daemons(runner)
    os.kill(old, signal.SIGSTOP)
    second = None
    try:
        second = _start(runner, "sleep 60")
        new = _daemons(runner)
        assert len(new) == 1 and old not in new
    finally:
        os.kill(old, signal.SIGCONT)
    try:
        assert wait_for(lambda: not os.path.exists(f"/proc/{old}"), timeout=LINGER + 10)
        assert _daemons(runner) == new
        assert runner.ok("fim-exec", "cat", "/mark") == "kept\n"
        assert _daemons(runner) == new
    finally:
        if second is not None:
            kill_group(second)


def test_runs_at_the_edge_of_the_linger_never_fail(runner: Runner) -> None:
    """A run starting while the keeper's linger expires either attaches before the
    keeper takes the slot's lock or mounts anew after the unmount: never in between."""
    runner.ok("fim-exec", "sh", "-c", "echo kept > /mark")
    for pause in (LINGER - 0.3, LINGER - 0.2, LINGER - 0.15, LINGER - 0.1, LINGER):
        time.sleep(pause)
        assert runner.ok("fim-exec", "cat", "/mark") == "kept\n"


def test_a_slot_planted_as_a_link_is_not_followed(runner: Runner) -> None:
    """The slot made a symbolic link to a directory open to all: the run mounts its own
    root (its instance's) and puts nothing there."""
    runner.ok("fim-exec", "true")
    slot = _slot(runner)
    assert wait_for(lambda: _gone(runner), timeout=LINGER + 3)
    elsewhere = Path(tempfile.mkdtemp(prefix="fim-planted-", dir="/tmp"))
    try:
        elsewhere.chmod(0o777)
        subprocess.run(["rm", "-rf", slot], check=True)
        os.symlink(elsewhere, slot)
        os.lchown(slot, runner.uid, runner.gid)
        assert runner.ok("fim-exec", "sh", "-c", "echo ran") == "ran\n"
        assert not any(elsewhere.iterdir())
        assert not any(os.path.dirname(p).startswith(str(elsewhere))
                       for p in image_mounts(runner.app).values())
    finally:
        if os.path.islink(slot):
            os.unlink(slot)
        remove_tree(str(elsewhere))  # never into a mount (one made there by mistake)


def test_the_lingering_daemon_holds_no_descriptor_of_the_run(runner: Runner) -> None:
    """A pipe given to the run that mounted is closed when the run ends, not when the
    mount it leaves lingering (or serving later runs) ends; the run's instance lock is
    kept (a commit waits for the mount)."""
    read, write = os.pipe()
    try:
        proc = subprocess.Popen(runner.argv(("fim-exec", "true"), None), pass_fds=[write],
                                cwd=runner.workspace, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        os.close(write)
        write = -1
        assert proc.wait(timeout=60) == 0
        ended = time.monotonic()
        assert select.select([read], [], [], LINGER + 3)[0]
        assert os.read(read, 1) == b""
        assert time.monotonic() - ended < LINGER / 2
        assert image_mounts(runner.app), "the mount lingers"
        lock = os.open(runner.data / LOCK_NAME, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(lock)
    finally:
        os.close(read)
        if write >= 0:
            os.close(write)


def test_a_permission_change_is_seen_by_the_next_run(runner: Runner) -> None:
    """fim-perms right after a run (its mount lingering): the next run has it."""
    marker = runner.home / "marker"
    marker.write_text("home\n")
    os.chown(marker, runner.uid, runner.gid)
    script = f"cat {marker} 2>/dev/null; echo end"
    assert runner.ok("fim-exec", "sh", "-c", script) == "end\n"
    runner.ok("fim-perms", "add", "home")
    assert runner.ok("fim-exec", "sh", "-c", script) == "home\nend\n"
    runner.ok("fim-perms", "del", "home")
    assert runner.ok("fim-exec", "sh", "-c", script) == "end\n"
