"""The host matrix (issue 21): one portable blueprint image run as the unprivileged user
in each kind of host it must run on. CI runs as root: root makes each condition in a
private mount namespace (``unshare --mount``), then runs the image as ``fimuser``
with ``setpriv``. Everything is real: the mounts, FUSE, bwrap, the user namespaces.

Conditions: the image on a read-only bind mount; ``fusermount3`` hidden (``/dev/null``
bound over it) or failing (a setuid ``false`` bound over it); ``/dev/fuse`` unusable
(``/dev/null`` bound over it); ``/tmp`` mounted noexec; a Debian 13 minbase root with no
python and no fuse3, entered with ``pivot_root``; the same root entered with ``chroot``,
which forbids user namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.cli.build import frozen
from tests import containers

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="makes the conditions as root"),
    pytest.mark.skipif(not frozen.available(), reason="needs PyInstaller (pip install .[build])"),
]

NAME = containers.IMAGE_NAME
#: What runs the image as the user once the condition is made (``$U``/``$G``: its ids).
AS_USER = 'exec setpriv --reuid="$U" --regid="$G" --clear-groups -- env -i "$@"'
#: Binds making a copy of the host's /proc, /dev and /sys visible in the root ``$R``
#: (read-only, but for the root's /tmp and the workspace ``$W`` at /work).
ROOT_BINDS = ('mkdir -p "$R/work" && mount --bind "$R" "$R" && mount -o remount,bind,ro "$R" && '
              'mount --rbind /proc "$R/proc" && mount --rbind /dev "$R/dev" && '
              'mount --rbind /sys "$R/sys" && mount --bind "$T" "$R/tmp" && '
              'mount --bind "$W" "$R/work" && ')
PIVOT = ('cd "$R" && mkdir -p "$R/tmp/.old" && pivot_root . tmp/.old && cd / && '
         'umount -l /tmp/.old && ')
CHROOT = 'cd / && exec chroot "$R" sh -c \'' + AS_USER + "' sh \"$@\""
CHROOT_AS_ROOT = 'cd / && exec chroot "$R" env -i "$@"'

CONDITIONS = {
    "host": "",
    "read-only": 'mount --bind "$W" "$W" && mount -o remount,bind,ro "$W" && ',
    "no-fusermount": "for f in /usr/bin/fusermount3 /usr/bin/fusermount; do "
                     '[ -e "$f" ] && mount --bind /dev/null "$f"; done; ',
    "failing-fusermount": 'cp /bin/false "$T/../fusermount3" && chmod 4755 "$T/../fusermount3" '
                          '&& mount --bind "$T/../fusermount3" /usr/bin/fusermount3 && ',
    "no-dev-fuse": "mount --bind /dev/null /dev/fuse && ",
    "tmp-noexec": "mount -t tmpfs -o noexec,nosuid,nodev,mode=1777 fim /tmp && ",
    "minbase": ROOT_BINDS + PIVOT,
    "chroot": ROOT_BINDS + CHROOT,
    "chroot-root": ROOT_BINDS + CHROOT_AS_ROOT,
    # the host's setuid fusermount3 in the chroot: the mount works, bwrap cannot sandbox
    "chroot-fusermount": ROOT_BINDS + 'mount -t tmpfs fim "$R/usr/local/bin" && '
                         'touch "$R/usr/local/bin/fusermount3" && mount --bind '
                         '/usr/bin/fusermount3 "$R/usr/local/bin/fusermount3" && ' + CHROOT,
}


class Host:
    """A workspace with a copy of the image, owned by the user, run in one condition."""

    def __init__(self, condition: str, image: Path, root: Path | None) -> None:
        entry = containers.ensure_user()
        containers.open_dev_fuse()
        self.condition = condition
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        # not under /tmp, which one condition makes noexec
        self.base = Path(tempfile.mkdtemp(prefix="fim-host-", dir="/var/tmp"))
        self.workspace = self.base / "w"
        self.home = self.base / "home"
        self.tmp = self.base / "tmp"
        for d in (self.workspace, self.home, self.tmp):
            d.mkdir()
            os.chown(d, self.uid, self.gid)
        os.chmod(self.base, 0o755)
        os.chmod(self.tmp, 0o1777)
        shutil.copy2(image, self.workspace / NAME)
        os.chown(self.workspace / NAME, self.uid, self.gid)
        self.root = root
        # inside a root the workspace is /work and the home /work/.home
        inner = Path("/work") if root is not None else self.workspace
        self.app = inner / NAME
        self.inner_home = inner / ".home" if root is not None else self.home
        if root is not None:
            (self.workspace / ".home").mkdir()
            os.chown(self.workspace / ".home", self.uid, self.gid)

    @property
    def data(self) -> Path:
        return self.workspace / f".{NAME}.data"

    def _command(self, args: tuple[str, ...], env: dict[str, str] | None,
                 cwd: str) -> tuple[list[str], dict[str, str]]:
        setup = CONDITIONS[self.condition]
        chrooted = self.condition.startswith("chroot")  # the condition runs the user
        script = setup if chrooted else setup + f'cd "{cwd}" && ' + AS_USER
        pairs = {"PATH": containers.BASE_PATH, "HOME": str(self.inner_home),
                 "LANG": "C.UTF-8", "USER": containers.USER, **(env or {})}
        variables = {"U": str(self.uid), "G": str(self.gid), "W": str(self.workspace),
                     "R": str(self.root or ""), "T": str(self.tmp)}
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                *(f"{k}={v}" for k, v in pairs.items()), str(self.app), *args]
        return argv, {**os.environ, **variables}

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: str = "/",
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        argv, environ = self._command(args, env, cwd)
        return subprocess.run(argv, capture_output=True, text=True, input=input,
                              timeout=300, env=environ)

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The image run in the background, in a session of its own."""
        argv, environ = self._command(args, None, "/")
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=environ, start_new_session=True)

    def ok(self, *args: str, **kwargs: object) -> str:
        proc = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert proc.returncode == 0, proc
        return proc.stdout

    def remove(self) -> None:
        subprocess.run(["rm", "-rf", str(self.base)], check=False)


@pytest.fixture(scope="session")
def trixie() -> Path:
    """The Debian 13 minbase root (tests/.cache), made once."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed")
    return containers.minbase_root("trixie")


def _host(condition: str, image: Path, root: Path | None = None) -> Iterator[Host]:
    made = Host(condition, image, root)
    yield made
    made.remove()


@pytest.fixture
def read_only(blueprint: Path) -> Iterator[Host]:
    yield from _host("read-only", blueprint)


@pytest.fixture
def host(blueprint: Path) -> Iterator[Host]:
    yield from _host("host", blueprint)


def test_read_only_media(read_only: Host) -> None:
    """The data falls back to a per-user directory (one notice, the first time); writes
    persist; changes to the image are refused in one line and change nothing."""
    proc = read_only.run("fim-exec", "sh", "-c", "echo kept > /note; echo hi")
    assert (proc.returncode, proc.stdout) == (0, "hi\n"), proc
    assert proc.stderr.count("\n") == 1 and "is not writable" in proc.stderr, proc
    fallback = next((read_only.home / ".local/share/fim").iterdir())
    assert fallback.name.startswith(f"{NAME}-")
    assert not read_only.data.exists()
    proc = read_only.run("fim-exec", "cat", "/note")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "kept\n", ""), proc
    assert read_only.ok("fim-root", "id", "-u") == "0\n"
    assert read_only.ok("-c", "echo booted") == "booted\n"
    before = (read_only.workspace / NAME).read_bytes()
    for args in (("fim-perms", "add", "home"), ("fim-env", "add", "A=b"),
                 ("fim-layer", "commit", "binary")):
        proc = read_only.run(*args)
        assert proc.returncode == 125, proc
        lines = proc.stderr.splitlines()
        assert len(lines) == 2 and "Read-only file system (the image cannot be changed)" in (
            lines[0]), proc
    assert (read_only.workspace / NAME).read_bytes() == before
    assert read_only.ok("fim-exec", "cat", "/note") == "kept\n"
    # a layer can still be committed into the per-user data directory
    read_only.ok("fim-layer", "commit", "layer")
    assert read_only.ok("fim-exec", "cat", "/note") == "kept\n"
    assert list((fallback / "layers").iterdir())


@pytest.mark.parametrize("backend", ["bwrap", "fimfs", "overlayfs", "unionfs"])
def test_data_dir_removable(host: Host, backend: str) -> None:
    """After a run with any backend, the owner can delete the data directory (the kernel
    overlay's work/work is left mode 000 by the kernel)."""
    script = "mkdir -p /made/deep && echo x > /made/deep/f && rm -rf /etc/os-release"
    proc = host.run("fim-exec", "sh", "-c", script, env={"FIM_OVERLAY": backend})
    assert proc.returncode == 0, proc
    assert (host.data / "root/made/deep/f").exists()
    assert not any((host.data / "work").iterdir())
    rm = subprocess.run(["setpriv", f"--reuid={host.uid}", f"--regid={host.gid}",
                         "--clear-groups", "rm", "-rf", str(host.data)],
                        capture_output=True, text=True)
    assert (rm.returncode, rm.stderr) == (0, ""), rm


@pytest.fixture
def no_fusermount(blueprint: Path) -> Iterator[Host]:
    yield from _host("no-fusermount", blueprint)


@pytest.fixture
def failing_fusermount(blueprint: Path) -> Iterator[Host]:
    yield from _host("failing-fusermount", blueprint)


@pytest.fixture
def no_dev_fuse(blueprint: Path) -> Iterator[Host]:
    yield from _host("no-dev-fuse", blueprint)


@pytest.fixture
def tmp_noexec(blueprint: Path) -> Iterator[Host]:
    yield from _host("tmp-noexec", blueprint)


@pytest.fixture
def minbase(blueprint: Path, trixie: Path) -> Iterator[Host]:
    yield from _host("minbase", blueprint, trixie)


@pytest.fixture(params=["chroot", "chroot-fusermount"])
def chrooted(request: pytest.FixtureRequest, blueprint: Path, trixie: Path) -> Iterator[Host]:
    yield from _host(request.param, blueprint, trixie)


def _runs_everything(host: Host) -> None:
    """Boot, fim-exec, fim-root, a write kept to the next run, fim-layer commit binary."""
    proc = host.run("-c", "echo booted; echo kept > /note")
    assert (proc.returncode, proc.stdout) == (0, "booted\n"), proc
    assert host.ok("fim-exec", "cat", "/note") == "kept\n"
    assert host.ok("fim-root", "sh", "-c", "id -u; touch /rooted; stat -c %u /rooted") == "0\n0\n"
    host.ok("fim-layer", "commit", "binary")
    assert not (host.data / "root/note").exists()
    assert host.ok("fim-exec", "cat", "/note") == "kept\n"  # now from the new layer
    assert not any((host.data / "work").iterdir())


def _processes_of(host: Host) -> list[str]:
    """Command lines of the processes still running the host's image."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                line = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(host.app) in line and not line.startswith("unshare "):
            found.append(line)
    return found


def _no_mounts_left(host: Host) -> None:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert str(host.base) not in f.read()


def test_without_fusermount(no_fusermount: Host) -> None:
    """No usable fusermount3: the run mounts FUSE in a user namespace of its own."""
    probe = no_fusermount.run("fim-exec", "sh", "-c", "echo ok")
    assert (probe.returncode, probe.stdout, probe.stderr) == (0, "ok\n", ""), probe
    _runs_everything(no_fusermount)
    for backend in ("bwrap", "overlayfs"):
        proc = no_fusermount.run("fim-exec", "cat", "/note", env={"FIM_OVERLAY": backend})
        assert (proc.returncode, proc.stdout) == (0, "kept\n"), proc
    # another process reaches the instance (its portal socket is on the host)
    background = no_fusermount.start("fim-exec", "sh", "-c", "echo started; sleep 60")
    try:
        assert background.stdout is not None
        assert background.stdout.readline() == "started\n"
        assert no_fusermount.ok("fim-instance", "exec", "0", "cat", "/note") == "kept\n"
    finally:
        containers.kill_group(background)
    # killed: the janitor detaches the mount in the run's namespace, its daemon ends
    assert containers.wait_for(lambda: not _processes_of(no_fusermount), timeout=15), (
        _processes_of(no_fusermount))
    _no_mounts_left(no_fusermount)


def test_failing_fusermount(failing_fusermount: Host) -> None:
    """A setuid fusermount3 that fails (e.g. a container that does not honour it): the
    mount is made again in a user namespace of the run's own."""
    proc = failing_fusermount.run("fim-exec", "sh", "-c", "echo ok > /f; cat /f")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "ok\n", ""), proc
    assert failing_fusermount.ok("fim-root", "id", "-u") == "0\n"
    _no_mounts_left(failing_fusermount)


def test_tmp_noexec(tmp_noexec: Host) -> None:
    """/tmp mounted noexec: the runtime is unpacked into the user's cache (one notice,
    the launcher's), everything runs."""
    proc = tmp_noexec.run("fim-exec", "echo", "hi")
    assert (proc.returncode, proc.stdout) == (0, "hi\n"), proc
    assert proc.stderr.count("\n") == 1 and "noexec" in proc.stderr, proc
    assert (tmp_noexec.home / ".cache/fim/app").is_dir()
    _runs_everything(tmp_noexec)


def test_minbase_root_without_python(minbase: Host, trixie: Path) -> None:
    """A Debian 13 minbase root (no python3, no fuse3), entered with pivot_root."""
    assert not (trixie / "usr/bin/python3").exists()
    assert not (trixie / "usr/bin/fusermount3").exists()
    _runs_everything(minbase)


def test_chroot_blocks_user_namespaces(chrooted: Host) -> None:
    """A chroot forbids user namespaces: one line naming the cause (after bwrap's own,
    when fusermount3 mounted and bwrap failed), exit 125."""
    proc = chrooted.run("fim-exec", "true")
    assert proc.returncode == 125, proc
    ours = [ln for ln in proc.stderr.splitlines() if not ln.startswith("bwrap: ")]
    assert "cannot create a user namespace" in ours[0] and "chroot" in ours[0], proc
    assert len(ours) == 2 and "exited with an error" in ours[1], proc
    # what does not mount still works
    assert chrooted.ok("fim-perms", "add", "home") == ""


def test_chroot_as_root(blueprint: Path, trixie: Path) -> None:
    """Root in a chroot cannot make the user namespace its sandbox needs either: one
    line naming the cause."""
    host = Host("chroot-root", blueprint, trixie)
    for path in (host.workspace, host.workspace / NAME):  # root's data beside it
        os.chown(path, 0, 0)
    try:
        proc = host.run("fim-exec", "true", env={"HOME": "/root", "USER": "root"})
        assert proc.returncode == 125, proc
        lines = proc.stderr.splitlines()
        assert len(lines) == 2 and "chroot" in lines[0], proc
    finally:
        host.remove()


def test_without_dev_fuse(no_dev_fuse: Host) -> None:
    """No usable /dev/fuse: the layers are extracted once into the user's cache and
    stacked by the kernel overlay; one notice says why."""
    proc = no_dev_fuse.run("fim-exec", "sh", "-c", "echo kept > /note; echo hi")
    assert (proc.returncode, proc.stdout) == (0, "hi\n"), proc
    assert proc.stderr.count("\n") == 1 and "/dev/fuse" in proc.stderr, proc
    cache = no_dev_fuse.home / ".cache/fim/extract"
    trees = [p for p in cache.iterdir() if p.is_dir()]
    assert len(trees) == 1 and (trees[0] / "bin").exists()
    stamp = trees[0].stat().st_ino
    assert no_dev_fuse.ok("fim-exec", "cat", "/note") == "kept\n"
    assert no_dev_fuse.ok("fim-root", "id", "-u") == "0\n"
    assert [p.stat().st_ino for p in cache.iterdir() if p.is_dir()] == [stamp]  # reused
    assert not any((no_dev_fuse.data / "work").iterdir())
    no_dev_fuse.ok("fim-layer", "commit", "binary")
    assert no_dev_fuse.ok("fim-exec", "cat", "/note") == "kept\n"
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # the new layer's tree


def test_two_runs_extract_once(no_dev_fuse: Host) -> None:
    """Two runs at once on a cold cache: both run, the layer is extracted once."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda n: no_dev_fuse.run("fim-exec", "echo", str(n)), (1, 2)))
    assert [(p.returncode, p.stdout) for p in procs] == [(0, "1\n"), (0, "2\n")], procs
    cache = no_dev_fuse.home / ".cache/fim/extract"
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    assert not [p for p in cache.iterdir() if ".partial." in p.name]
