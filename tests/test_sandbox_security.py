"""What an image someone downloads can reach on the host: each permission and unshare
option with the switch off (denied) and on (allowed), as root and as a normal user
(docs/differences.md, "Default means isolated": no host root, private /tmp, network unshared unless
``network``, /sys read-only)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import Runner

pytestmark = pytest.mark.fuse


@pytest.fixture
def secret(runner: Runner) -> Iterator[Path]:
    """A file in the caller's host home directory."""
    runner.home.mkdir(parents=True, exist_ok=True)
    path = runner.home / "fim-secret.txt"
    path.write_text("top secret\n")
    os.chown(path, runner.uid, runner.gid)
    yield path
    path.unlink(missing_ok=True)


def _read_anywhere(runner: Runner, path: Path) -> subprocess.CompletedProcess[str]:
    """Try to read ``path`` by its own path and through /proc/1/root, /tmp and a search."""
    script = (f'cat "{path}" 2>/dev/null; cat "/proc/1/root{path}" 2>/dev/null; '
              f'grep -rs "top secret" /tmp /run /mnt /media 2>/dev/null; true')
    return runner.run("fim-exec", "sh", "-c", script)


def test_home_denied_without_the_permission(runner: Runner, secret: Path) -> None:
    assert "top secret" not in _read_anywhere(runner, secret).stdout


def test_home_allowed_with_the_permission(runner: Runner, secret: Path) -> None:
    runner.ok("fim-perms", "add", "home")
    assert runner.ok("fim-exec", "cat", str(secret)) == "top secret\n"
    runner.ok("fim-perms", "del", "home")
    assert "top secret" not in _read_anywhere(runner, secret).stdout


def test_host_tmp_is_private(runner: Runner) -> None:
    fd, name = tempfile.mkstemp(prefix="fim-host-tmp-", dir="/tmp")
    os.write(fd, b"left in host /tmp\n")
    os.close(fd)
    os.chmod(name, 0o644)
    try:
        proc = runner.run("fim-exec", "sh", "-c", f"cat {name}; ls /tmp")
        assert "left in host /tmp" not in proc.stdout
        assert os.path.basename(name) not in proc.stdout
    finally:
        os.unlink(name)


def _server() -> tuple[socket.socket, int, threading.Event]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(20)
    got = threading.Event()

    def accept() -> None:
        try:
            conn, _ = srv.accept()
            conn.sendall(b"hello from the host\n")
            conn.close()
            got.set()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1], got


_CONNECT = 'exec 3<>/dev/tcp/127.0.0.1/{port} && cat <&3'


@pytest.mark.parametrize("granted", [False, True])
def test_network(runner: Runner, granted: bool) -> None:
    """A TCP connection to a server on host loopback: only with ``network``."""
    if granted:
        runner.ok("fim-perms", "add", "network")
    srv, port, got = _server()
    try:
        proc = runner.run("fim-exec", "bash", "-c", _CONNECT.format(port=port), timeout=60)
        if granted:
            assert proc.stdout == "hello from the host\n" and got.wait(10)
        else:
            assert proc.returncode != 0 and "hello" not in proc.stdout and not got.is_set()
    finally:
        srv.close()


def test_network_unshare_wins(runner: Runner) -> None:
    runner.ok("fim-perms", "add", "network")
    runner.ok("fim-unshare", "add", "net")
    srv, port, got = _server()
    try:
        proc = runner.run("fim-exec", "bash", "-c", _CONNECT.format(port=port), timeout=60)
        assert proc.returncode != 0 and not got.is_set()
    finally:
        srv.close()


@pytest.mark.parametrize("unshared", [False, True])
def test_host_processes(runner: Runner, unshared: bool) -> None:
    """The pid namespace is unshared with or without `fim-unshare pid`."""
    marker = subprocess.Popen(["sleep", "123.456"])
    try:
        if unshared:
            runner.ok("fim-unshare", "add", "pid")
        script = "echo ran; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '"
        out = runner.ok("fim-exec", "sh", "-c", script)
        assert out.startswith("ran\n") and "123.456" not in out
    finally:
        marker.kill()
        marker.wait()


def test_writes_stay_in_the_upper_dir(runner: Runner) -> None:
    """Everything written inside lands in DATA/root (or a tmpfs); nothing reaches the host."""
    before = set(os.listdir("/"))
    runner.run("fim-root", "sh", "-c", "for d in / /etc /usr /sys /proc/sys/kernel /dev; do "
               "echo x > $d/fim-escape-test; done; true")
    assert set(os.listdir("/")) == before
    assert not os.path.exists("/etc/fim-escape-test")
    assert (runner.data / "root" / "fim-escape-test").read_text() == "x\n"
    assert runner.run("fim-root", "sh", "-c", "echo 1 > /proc/sys/kernel/hostname_x").returncode
    assert runner.run("fim-root", "sh", "-c", "echo x > /sys/kernel/fim-test").returncode


@pytest.mark.parametrize("granted", [False, True])
def test_dev(runner: Runner, granted: bool) -> None:
    host = set(os.listdir("/dev"))
    if granted:
        runner.ok("fim-perms", "add", "dev")
    inside = set(runner.ok("fim-exec", "ls", "-A", "/dev").split())
    if granted:
        assert inside == host
    else:
        assert inside <= {"console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts",
                          "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"}
        assert "fuse" not in inside


@pytest.mark.parametrize("perm, node", [("input", "/dev/input"), ("gpu", "/dev/dri")])
def test_device_permissions(runner: Runner, perm: str, node: str) -> None:
    """Device directories come only with their permission (present here only if the
    host has them)."""
    check = f"test -e {node} && echo present || echo absent"
    assert runner.ok("fim-exec", "sh", "-c", check) == "absent\n"
    runner.ok("fim-perms", "add", perm)
    expected = "present\n" if os.path.exists(node) else "absent\n"
    assert runner.ok("fim-exec", "sh", "-c", check) == expected


def test_no_host_root_inside(runner: Runner) -> None:
    out = runner.run("fim-exec", "sh", "-c", "ls /tmp/fim/run/host; cat /etc/os-release").stdout
    assert "Debian" not in out and "bookworm" not in out


def _xdg(runner: Runner) -> Path:
    d = runner.workspace / "xdg"
    d.mkdir(exist_ok=True)
    os.chown(d, runner.uid, runner.gid)
    return d


# permission -> (host file that only it may show, extra environment); {xdg} is a fresh
# XDG_RUNTIME_DIR of the caller, {ws} the workspace
MARKERS = {
    "media": ("/mnt/fim-marker-media", {}),
    "udev": ("/run/udev/fim-marker-udev", {}),
    "dbus_system": ("/run/dbus/system_bus_socket", {}),
    "shm": ("/dev/shm/fim-marker-shm", {}),
    "audio": ("{xdg}/pulse/native", {"XDG_RUNTIME_DIR": "{xdg}"}),
    "wayland": ("{xdg}/wayland-fim",
                {"XDG_RUNTIME_DIR": "{xdg}", "WAYLAND_DISPLAY": "wayland-fim"}),
    "dbus_user": ("{xdg}/bus", {"DBUS_SESSION_BUS_ADDRESS": "unix:path={xdg}/bus,guid=1"}),
    "xorg": ("{ws}/Xauthority", {"XAUTHORITY": "{ws}/Xauthority", "DISPLAY": ":7"}),
}
assert MARKERS


@pytest.mark.parametrize("perm", sorted(MARKERS))
def test_socket_and_directory_permissions(runner: Runner, perm: str) -> None:
    """Each permission's host path is invisible without it and visible with it."""
    if os.geteuid() != 0:
        pytest.skip("makes marker files in /run, /mnt and /dev/shm")
    template, env_template = MARKERS[perm]
    values = {"xdg": str(_xdg(runner)), "ws": str(runner.workspace)}
    marker = Path(template.format(**values))
    env = {k: v.format(**values) for k, v in env_template.items()}
    existed = marker.exists()
    if not existed:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{perm} marker\n")
        os.chmod(marker, 0o644)
    try:
        check = f"test -e {marker} && echo visible || echo hidden"
        assert runner.ok("fim-exec", "sh", "-c", check, env=env) == "hidden\n"
        runner.ok("fim-perms", "add", perm)
        assert runner.ok("fim-exec", "sh", "-c", check, env=env) == "visible\n"
    finally:
        if not existed:
            marker.unlink()
