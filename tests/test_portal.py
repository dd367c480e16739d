"""The portal's protocol and daemon on the host, without a sandbox (sandbox.portal):
frames, exit codes, stdin passed as a descriptor, signals, concurrency, and every bad
input or fault giving one line and no hang. The end-to-end tests are in
tests/test_instance.py."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.sandbox import portal
from tests.containers import wait_for

ROOT = str(Path(__file__).resolve().parent.parent)
CLIENT = "import sys; from sandbox import portal; sys.exit(portal.main_dispatcher(sys.argv[1:]))"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A host daemon whose instance process is a ``sleep`` the test can kill."""
    directory = tmp_path / "portal"
    directory.mkdir(mode=0o700)
    ref = subprocess.Popen(["sleep", "60"])
    portal.start_host(str(directory), ref.pid)
    yield directory, ref
    ref.kill()
    ref.wait()


def dispatch(directory: Path, *argv: str, extra: dict[str, str] | None = None,
             **kwargs: object) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, portal.ENV_DIR: str(directory), **(extra or {})}
    return subprocess.run([sys.executable, "-c", CLIENT, *argv], env=env, capture_output=True,
                          timeout=30, **kwargs)  # type: ignore[call-overload]


def raw(directory: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(directory / portal.HOST_SOCKET))
    return sock


def test_socket_is_private(daemon: tuple[Path, object]) -> None:
    directory, _ = daemon
    assert (directory / portal.HOST_SOCKET).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 1", 1), ("exit 7", 7),
                                              ("kill -INT $$", 130), ("kill -KILL $$", 137)])
def test_exit_codes(daemon: tuple[Path, object], script: str, code: int) -> None:
    assert dispatch(daemon[0], "sh", "-c", script).returncode == code


def test_binary_stdin_round_trips(daemon: tuple[Path, object], tmp_path: Path) -> None:
    data = os.urandom(10 << 20)
    proc = dispatch(daemon[0], "cat", input=data)
    assert proc.returncode == 0 and proc.stdout == data


def test_stderr_and_environment(daemon: tuple[Path, object]) -> None:
    proc = dispatch(daemon[0], "sh", "-c", 'echo "$GREETING" >&2', extra={"GREETING": "hi"})
    assert proc.stderr == b"hi\n"


def test_unknown_program_and_no_arguments(daemon: tuple[Path, object]) -> None:
    proc = dispatch(daemon[0], "no-such-program-here")
    assert proc.returncode == 1 and b"program not found" in proc.stderr
    assert proc.stderr.count(b"\n") == 1
    proc = dispatch(daemon[0])
    assert proc.returncode == 1 and b"No arguments for dispatcher" in proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
                                 signal.SIGUSR2, signal.SIGQUIT])
def test_signals_reach_the_program(daemon: tuple[Path, object], sig: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT, portal.ENV_DIR: str(daemon[0])}
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, "sh", "-c",
                             f'trap "exit 42" {sig.name[3:]}; echo ready; '
                             "while :; do sleep 0.05; done"], env=env, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 42
    finally:
        proc.kill()
        proc.wait()


def test_concurrent_calls(daemon: tuple[Path, object]) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT, portal.ENV_DIR: str(daemon[0])}
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, "sh", "-c", f"echo {i}"], env=env,
                              stdout=subprocess.PIPE) for i in range(20)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 20
    assert outs == [f"{i}\n".encode() for i in range(20)]


def _answer(sock: socket.socket) -> dict:
    message, _ = portal.recv_frame(sock)
    assert message is not None
    return message


@pytest.mark.parametrize("payload", [
    struct.pack(">I", portal.MAX_FRAME + 1),                      # huge frame
    struct.pack(">I", 5) + b"{nope",                              # not JSON
    struct.pack(">I", 8) + b'{"v":99}',                           # wrong version
    struct.pack(">I", 5) + b"[1,2]",                              # not an object
])
def test_bad_frames_are_one_error(daemon: tuple[Path, object], payload: bytes) -> None:
    sock = raw(daemon[0])
    sock.sendall(payload)
    message = _answer(sock)
    assert message["type"] == "error" and "\n" not in message["message"]
    sock.close()
    assert dispatch(daemon[0], "true").returncode == 0  # the daemon still serves


def test_request_without_descriptors(daemon: tuple[Path, object]) -> None:
    sock = raw(daemon[0])
    portal.send_frame(sock, {"type": "exec", "argv": ["true"], "env": {}})
    message = _answer(sock)
    assert message["type"] == "error" and "file descriptors" in message["message"]


def test_client_gone_mid_request_and_mid_run(daemon: tuple[Path, object],
                                             tmp_path: Path) -> None:
    sock = raw(daemon[0])
    sock.sendall(struct.pack(">I", 100) + b'{"v"')  # then nothing: the daemon times out
    sock.close()
    sock = raw(daemon[0])
    pidfile = tmp_path / "pid"
    portal.send_frame(sock, {"type": "exec", "argv": ["sh", "-c", f"echo $$ > {pidfile}; "
                                                      "exec sleep 60"], "env": {}}, [0, 1, 2])
    started = _answer(sock)
    assert started["type"] == "started"
    assert wait_for(pidfile.exists)
    sock.close()
    pid = started["pid"]
    assert wait_for(lambda: _gone(pid), timeout=5)
    assert dispatch(daemon[0], "true").returncode == 0


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_stale_socket_and_no_daemon(tmp_path: Path) -> None:
    stale = tmp_path / "host.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    start = time.monotonic()
    proc = dispatch(tmp_path, "true")
    assert proc.returncode == 1 and b"stale socket" in proc.stderr
    assert proc.stderr.count(b"\n") == 1
    stale.unlink()
    with pytest.raises(portal.PortalError, match="no portal daemon"):
        portal.call(str(stale), ["true"], wait=0.2)
    assert time.monotonic() - start < 10


@pytest.mark.skipif(os.geteuid() != 0, reason="needs another uid")
def test_other_uid_is_refused() -> None:
    import shutil
    import tempfile

    from tests.containers import ensure_user

    user = ensure_user()
    directory = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own are private to root
    ref = subprocess.Popen(["sleep", "60"])
    try:
        os.chmod(directory, 0o755)
        portal.start_host(str(directory), ref.pid)
        os.chmod(directory / portal.HOST_SOCKET, 0o666)  # past the file modes: SO_PEERCRED
        # everything imported first: the user cannot read this interpreter's library
        code = ("import os, sys; from sandbox import portal; "
                f"os.setgid({user.pw_gid}); os.setuid({user.pw_uid}); "
                "sys.exit(portal.main_dispatcher(sys.argv[1:]))")
        env = {**os.environ, "PYTHONPATH": ROOT, portal.ENV_DIR: str(directory)}
        proc = subprocess.run([sys.executable, "-c", code, "true"], env=env,
                              capture_output=True, timeout=30)
        assert proc.returncode == 1 and b"refused a connection from uid" in proc.stderr
        assert proc.stderr.count(b"\n") == 1
    finally:
        ref.kill()
        ref.wait()
        shutil.rmtree(directory, ignore_errors=True)


def test_daemon_ends_with_its_instance(daemon: tuple[Path, subprocess.Popen[bytes]]) -> None:
    directory, ref = daemon
    sock = directory / portal.HOST_SOCKET
    assert sock.exists()
    ref.kill()
    ref.wait()
    start = time.monotonic()
    assert wait_for(lambda: not sock.exists(), timeout=2, step=0.01)
    assert time.monotonic() - start < 0.5


def test_launch_line_with_a_background_command(tmp_path: Path) -> None:
    """The guest daemon starts in the background; the program is still exec'd (it keeps
    bwrap's pid), a builtin still runs, a missing program is still 127."""
    import shutil

    from fim.app.runtime import find_bash
    from fim.sandbox.bwrap import RUN_PROGRAM, launch_line

    assert launch_line([]) == RUN_PROGRAM
    bash = find_bash()
    marker = tmp_path / "started"
    script = launch_line([["touch", str(marker)]])
    sh = shutil.which("sh") or "/bin/sh"
    pid_out = subprocess.run([bash, "-c", script, "bash", sh, "-c", "echo $$; exit 3"],
                             capture_output=True, text=True, timeout=30)
    assert pid_out.returncode == 3
    proc = subprocess.Popen([bash, "-c", script, "bash", sh, "-c", "echo $$"],
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert int(out) == proc.pid  # exec'd: no shell stays in between
    assert wait_for(marker.exists)
    assert subprocess.run([bash, "-c", script, "bash", "echo", "builtin"], capture_output=True,
                          text=True, timeout=30).stdout == "builtin\n"
    missing = subprocess.run([bash, "-c", script, "bash", "no-such-program"],
                             capture_output=True, text=True, timeout=30)
    assert missing.returncode == 127 and "no-such-program: command not found" in missing.stderr
