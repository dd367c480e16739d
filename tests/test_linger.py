"""fim.fimfs.linger: a mount shared by leases and kept a moment after the last one, through
real FUSE mounts of a small in-memory filesystem (tests.test_fuse.TreeFS)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fim.fimfs import fuse, linger
from tests.test_fuse import REPO, TreeFS, needs_fuse, wait_for

pytestmark = [pytest.mark.fuse, needs_fuse]
SHORT = 0.4  # the keepers' linger here


def _mount(directory: Path, keep: float = SHORT) -> linger.Lease:
    """Claim the slot, mount TreeFS there with a keeper, attach: the claimant's lease."""
    got = linger.acquire(str(directory))
    assert isinstance(got, linger.Claim)
    fuse.mount(TreeFS(), got.mountpoint, foreground=False, log_file=got.slot.log,
               on_ready=got.keeper(keep).start)
    lease = got.attach()
    assert lease is not None
    return lease


def _gone(slot: linger.Slot) -> bool:
    return not fuse.is_mounted(slot.mountpoint) and not os.path.exists(slot.socket)


@pytest.fixture
def slot(tmp_path: Path):  # noqa: ANN201
    s = linger.Slot(str(tmp_path / "slot"))
    yield s
    if fuse.is_mounted(s.mountpoint):
        fuse.umount(s.mountpoint, lazy=True)


def test_users_share_one_mount_that_ends_after_the_linger(slot: linger.Slot) -> None:
    first = _mount(Path(slot.directory))
    second = linger.acquire(slot.directory)
    assert isinstance(second, linger.Lease)
    assert second.pid == first.pid != os.getpid()
    assert os.listdir(second.mountpoint)  # the tree is served
    first.close()
    time.sleep(SHORT * 2)
    assert fuse.is_mounted(slot.mountpoint), "a user is still attached"
    second.close()
    assert wait_for(lambda: _gone(slot), SHORT + 5)
    assert wait_for(lambda: not os.path.exists(f"/proc/{first.pid}"), 5)
    third = linger.acquire(slot.directory)  # a new claim, nothing stale to clear
    assert isinstance(third, linger.Claim)
    third.release()


def test_a_user_within_the_linger_reuses_the_mount(slot: linger.Slot) -> None:
    first = _mount(Path(slot.directory), keep=2.0)
    first.close()
    time.sleep(0.3)
    again = linger.acquire(slot.directory)
    assert isinstance(again, linger.Lease) and again.pid == first.pid
    again.close()
    assert wait_for(lambda: _gone(slot), 2.0 + 5)


def test_no_expiry_while_someone_holds_the_lock(slot: linger.Slot) -> None:
    """An attacher holds the slot's lock: the keeper waits for it, whatever the linger."""
    _mount(Path(slot.directory)).close()
    fd = os.open(slot.lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        time.sleep(SHORT * 3)
        assert fuse.is_mounted(slot.mountpoint) and os.path.exists(slot.socket)
    finally:
        os.close(fd)
    assert wait_for(lambda: _gone(slot), 5)


HOLDER = """
import sys, time
from fim.fimfs import linger
lease = linger.acquire(sys.argv[1])
assert isinstance(lease, linger.Lease)
print(lease.pid, flush=True)
time.sleep(60)
"""


def test_a_killed_user_releases_its_lease(slot: linger.Slot) -> None:
    """kill -9 of one user: the other keeps the mount; it ends after both."""
    mine = _mount(Path(slot.directory))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, slot.directory], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert int(holder.stdout.readline()) == mine.pid
        mine.close()
        time.sleep(SHORT * 2)
        assert fuse.is_mounted(slot.mountpoint)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert wait_for(lambda: _gone(slot), SHORT + 5)
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_daemon_leaves_nothing_to_attach_to(slot: linger.Slot) -> None:
    lease = _mount(Path(slot.directory), keep=30)
    os.kill(lease.pid, signal.SIGKILL)
    assert wait_for(lambda: not os.path.exists(f"/proc/{lease.pid}/status")
                    or "zombie" in Path(f"/proc/{lease.pid}/status").read_text(), 5)
    got = linger.acquire(slot.directory)
    assert isinstance(got, linger.Claim), "a dead daemon's socket must not give a lease"
    assert not fuse.is_mounted(slot.mountpoint) and not os.path.exists(slot.socket)
    got.release()
    lease.close()
    again = _mount(Path(slot.directory))  # the slot works again
    assert os.listdir(again.mountpoint)
    again.close()
    assert wait_for(lambda: _gone(slot), SHORT + 5)


MOUNTER = """
import sys, time
from fim.fimfs import fuse, linger
from tests.test_fuse import TreeFS
claim = linger.acquire(sys.argv[1])
fuse.mount(TreeFS(), claim.mountpoint, foreground=False, on_ready=claim.keeper(0.4).start)
lease = claim.attach()
print(lease.pid, flush=True)
time.sleep(60)
"""


def test_a_mount_of_another_mount_namespace_is_left_alone(slot: linger.Slot) -> None:
    """The slot's daemon serves a mount this process does not see (made in another
    mount namespace): no lease, nothing cleared; its keeper ends it there."""
    other = subprocess.Popen(["unshare", "--mount", "--propagation", "private",
                              sys.executable, "-c", MOUNTER, slot.directory], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        daemon = int(other.stdout.readline())
        assert not fuse.is_mounted(slot.mountpoint)
        assert linger.acquire(slot.directory) is None
        assert os.path.exists(slot.socket) and os.path.exists(f"/proc/{daemon}")
    finally:
        other.kill()
        other.wait()
    assert wait_for(lambda: not os.path.exists(slot.socket), SHORT + 5)
    assert wait_for(lambda: not os.path.exists(f"/proc/{daemon}/status")
                    or "zombie" in Path(f"/proc/{daemon}/status").read_text(), 5)
    claim = linger.acquire(slot.directory)
    assert isinstance(claim, linger.Claim)
    claim.release()


def test_a_slot_that_is_a_link_or_open_to_others_is_not_used(tmp_path: Path) -> None:
    """A symbolic link planted as the slot (to another user's directory, say) would put
    the socket and the mount there: no lease, no claim, nothing made at its target."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    assert linger.acquire(str(link)) is None
    assert not any(elsewhere.iterdir())
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    assert linger.acquire(str(shared)) is None
    assert not any(shared.iterdir())


def test_a_link_planted_as_the_mount_point_is_not_followed(tmp_path: Path) -> None:
    """``mnt`` made a symbolic link: the claimant mounts on a directory of the slot, and
    where the link led is neither mounted on nor touched."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    slot = linger.Slot(str(tmp_path / "slot"))
    os.mkdir(slot.directory, 0o700)
    os.symlink(elsewhere, slot.mountpoint)
    got = linger.acquire(slot.directory)
    assert isinstance(got, linger.Claim)
    try:
        assert not os.path.islink(slot.mountpoint) and os.path.isdir(slot.mountpoint)
        assert elsewhere.is_dir() and not any(elsewhere.iterdir())
    finally:
        got.release()
