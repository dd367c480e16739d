"""Helpers of the tests that run containers: a blueprint image with the portable runtime
(built once per session), and running it as root or as an unprivileged user.

CI runs as root, users do not: every end-to-end test runs both ways. The unprivileged
user is made here with ``useradd``; commands run as it through ``runuser`` with a
clean environment, in a workspace under /tmp it owns (pytest's own tmp dirs are private
to root).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import images

USER = "fimuser"
IMAGE_NAME = "app.flatimage"
BASE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"


def build_frozen_blueprint(directory: Path) -> Path:
    """``fim build blueprint --runtime frozen`` into ``directory``."""
    out = directory / IMAGE_NAME
    # PyInstaller's cache of this checkout: the per-user one is rewritten by any other
    # build at the same time (an empty index: "SyntaxError" in load_py_data_struct)
    env = {**os.environ, "PYINSTALLER_CONFIG_DIR": str(CACHE / "pyinstaller")}
    proc = subprocess.run([sys.executable, "-m", "fim.cli.fim", "build", "blueprint", "-o",
                           str(out), "--runtime", "frozen"],
                          capture_output=True, text=True, timeout=1800, env=env)
    assert proc.returncode == 0, proc.stderr
    os.chmod(out, 0o755)
    return out


CACHE = Path(__file__).parent / ".cache"


def minbase_root(suite: str) -> Path:
    """A minimal Debian root (``debootstrap --variant=minbase SUITE``: no python3, no
    fuse3), made on first use and cached in tests/.cache (git-ignored)."""
    root = CACHE / f"{suite}-minbase"
    if not root.is_dir():
        CACHE.mkdir(exist_ok=True)
        partial = CACHE / f"{suite}-minbase.{os.getpid()}"
        subprocess.run(["debootstrap", "--variant=minbase", suite, str(partial)],
                       check=True, capture_output=True, timeout=1800)
        partial.rename(root)
    return root


def remove_runtime(path: Path) -> None:
    """The extraction directories of an image's runtime (shared by its copies)."""
    images.remove_runtime(path)


def ensure_user() -> pwd.struct_passwd:
    """The unprivileged test user, created when missing (needs root)."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", USER], check=True)
        return pwd.getpwnam(USER)


def open_dev_fuse() -> None:
    """Distributions make /dev/fuse 0666 (udev); a container host may leave it 0600,
    where an unprivileged libfuse cannot open it. Give it the usual mode."""
    st = os.stat("/dev/fuse")
    if stat.S_IMODE(st.st_mode) & 0o006 != 0o006:
        os.chmod("/dev/fuse", 0o666)


@dataclass
class Runner:
    """Runs an image in a workspace as one user: ``root`` or the unprivileged one."""

    who: str
    workspace: Path
    uid: int
    gid: int
    home: Path

    @property
    def app(self) -> Path:
        return self.workspace / IMAGE_NAME

    @property
    def data(self) -> Path:
        return self.workspace / f".{IMAGE_NAME}.data"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        base = {"PATH": BASE_PATH, "HOME": str(self.home), "LANG": "C.UTF-8",
                "USER": USER if self.who == "user" else "root"}
        return {**base, **(extra or {})}

    def argv(self, args: tuple[str, ...], env: dict[str, str] | None) -> list[str]:
        pairs = [f"{k}={v}" for k, v in self.env(env).items()]
        prefix = ["runuser", "-u", USER, "--"] if self.who == "user" else []
        return [*prefix, "env", "-i", *pairs, str(self.app), *args]

    def run(self, *args: str, env: dict[str, str] | None = None, input: str | None = None,
            cwd: str | Path | None = None, timeout: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(args, env), capture_output=True, text=True,
                              input=input, cwd=cwd or self.workspace, timeout=timeout)

    def ok(self, *args: str, **kwargs: object) -> str:
        """Run a command that must succeed; its stdout."""
        proc = self.run(*args, **kwargs)  # type: ignore[arg-type]
        assert proc.returncode == 0, proc
        return proc.stdout

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start the image in the background, in its own session (so the test can end
        the whole group); :func:`image_pid` finds the image process itself."""
        return subprocess.Popen(self.argv(args, env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=self.workspace,
                                start_new_session=True)

    def file(self, relative: str, content: str = "", mode: int = 0o644) -> Path:
        """A file in the workspace owned by the runner's user."""
        path = self.workspace / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        os.chmod(path, mode)
        os.chown(path, self.uid, self.gid)
        return path


def image_pid(popen: subprocess.Popen[str], timeout: float = 10) -> int:
    """The pid of the image process started by ``popen`` (under runuser: its child)."""
    if popen.args[0] != "runuser":  # type: ignore[index]
        return popen.pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = _children(popen.pid)
        if children:
            return children[0]
        time.sleep(0.02)
    raise AssertionError("the image process did not start")


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def wait_for(predicate: object, timeout: float = 10, step: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return bool(predicate())  # type: ignore[operator]


def fim_mounts() -> list[str]:
    """Mount points under /tmp/fim-UID (the instances' stacks)."""
    with open("/proc/self/mountinfo", "rb") as f:
        points = [line.split(b" ")[4].decode(errors="replace") for line in f]
    return [p for p in points if re.match(r"/tmp/fim-[0-9]+/", p)]


def image_mounts(image: Path) -> dict[int, str]:
    """fim's mounts of ``image`` (the mount's source is the image's path): mount id ->
    mount point. A new mount has a new id."""
    found = {}
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            after = fields[fields.index(b"-") + 1:]
            if after[0].startswith(b"fuse") and os.fsdecode(after[1]) == str(image):
                found[int(fields[0])] = os.fsdecode(fields[4])
    return found


def workspace_runner(who: str, source: Path) -> Runner:
    """A fresh copy of the image ``source`` in a workspace of its own, for ``who``
    (root, or the unprivileged user: made here when the tests run as root)."""
    if who == "root" and os.geteuid() != 0:
        pytest.skip("runs as root only when the tests do")
    if who == "user" and os.geteuid() == 0:
        entry = ensure_user()
        open_dev_fuse()
        uid, gid, home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)
    else:
        uid, gid = os.getuid(), os.getgid()
        who = "user" if os.geteuid() != 0 else who
        home = Path(tempfile.mkdtemp(prefix="fim-home-"))
    workspace = Path(tempfile.mkdtemp(prefix="fim-run-", dir="/tmp"))
    os.chmod(workspace, 0o755)
    os.chown(workspace, uid, gid)
    shutil.copy2(source, workspace / IMAGE_NAME)
    os.chown(workspace / IMAGE_NAME, uid, gid)
    return Runner(who, workspace, uid, gid, home)


def remove_workspace(runner: Runner) -> None:
    subprocess.run(["rm", "-rf", str(runner.workspace)], check=False)
    for mp in fim_mounts():  # of a run that died in a test that failed half-way
        if not _run_alive(mp):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True, check=False)


@pytest.fixture(params=["root", "user"])
def runner(request: pytest.FixtureRequest, blueprint: Path) -> Iterator[Runner]:
    """A fresh copy of the blueprint image in a workspace, run as root or as a user."""
    made = workspace_runner(request.param, blueprint)
    yield made
    remove_workspace(made)


def _run_alive(mountpoint: str) -> bool:
    """Whether the run owning ``.../instance/<pid>/...`` still exists (other tests, or
    other test sessions, may be running images at the same time)."""
    parts = mountpoint.split("/")
    if "instance" not in parts or parts.index("instance") + 1 >= len(parts):
        return True
    pid = parts[parts.index("instance") + 1]
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")


def kill_group(popen: subprocess.Popen[str]) -> None:
    """End a background run and everything it started."""
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    popen.communicate(timeout=30)


def pty_session(runner: Runner, args: tuple[str, ...], script: list[str], *,
                env: dict[str, str] | None = None, prompt: bytes | None = b">",
                timeout: float = 30, idle: float = 0.3) -> tuple[str, int]:
    """Run the image with ``args`` under a pseudo-terminal and type ``script`` line by
    line, each once the output has been quiet for ``idle`` seconds (and ends with
    ``prompt`` when given); what the terminal showed and the exit code."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(runner.workspace)
        argv = runner.argv(args, env)
        os.execvp(argv[0], argv)
    out = b""
    deadline = time.monotonic() + timeout
    lines = list(script)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], idle)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif lines and out and (prompt is None or out.rstrip().endswith(prompt)):
                os.write(fd, lines.pop(0).encode() + b"\n")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def isolated(script: str, keep: Sequence[Path], *, noexec: bool = False,
             timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the sh ``script`` as root in a mount namespace of its own whose /tmp is a new
    tmpfs (mounted noexec with ``noexec``), the directories ``keep`` (under /tmp) bound
    back at their paths: what it does under /tmp (a runtime directory, one another user
    planted) concerns this namespace only, not the other tests running images."""
    if os.geteuid() != 0:
        pytest.skip("makes a mount namespace as root")
    hold = tempfile.mkdtemp(prefix="fim-tmp-", dir="/var/tmp")
    options = "mode=1777,noexec" if noexec else "mode=1777"
    lines = ["set -e", f"mount --bind /tmp {hold}", f"mount -t tmpfs -o {options} tmpfs /tmp"]
    for path in keep:
        relative = os.path.relpath(path, "/tmp")
        assert not relative.startswith(".."), path
        lines += [f"mkdir -p {shlex.quote(str(path))}",
                  f"mount --bind {hold}/{shlex.quote(relative)} {shlex.quote(str(path))}"]
    lines += ["set +e", script]
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               "\n".join(lines)], capture_output=True, text=True,
                              timeout=timeout)
    finally:
        os.rmdir(hold)
