"""Instances and the portal end to end on the blueprint image (no python3 inside), as root
and as an unprivileged user: `fim-instance list|exec` (spec 2.14), `fim_portal` (12),
upstream's instance and portal rows of section 19, a TTY through `fim-instance exec`,
and no daemon outliving its instance."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fim.fimfs.linger import LINGER
from fim.sandbox import portal
from tests.containers import Runner, image_pid, kill_group, pty_session, wait_for

pytestmark = pytest.mark.fuse

JSON = '{"key":["val1","val2"]}'
# python3 is on the host and not in the blueprint (upstream uses jq the same way)
PICK = ["python3", "-c", 'import json, sys; print(json.load(sys.stdin)["key"][1])']


def instances(runner: Runner) -> list[tuple[int, int]]:
    out = runner.ok("fim-instance", "list")
    return [(int(i), int(p)) for i, p in (line.split(":") for line in out.splitlines())]


def guest_ready(runner: Runner, pid: int) -> bool:
    app = app_dir(runner)
    return os.path.exists(f"{app}/instance/{pid}/portal/{portal.GUEST_SOCKET}")


_APP: dict[tuple[str, str], str] = {}


def app_dir(runner: Runner) -> str:
    """FIM_DIR_APP of the runner's image (one per build: keyed by the build id)."""
    from fim.app import image

    key = (runner.who, image.read_layout(str(runner.app)).build_id)
    if key not in _APP:
        _APP[key] = runner.ok("fim-exec", "sh", "-c", 'echo "$FIM_DIR_APP"').strip()
    return _APP[key]


def _own_instances(runner: Runner) -> set[int]:
    directory = f"{app_dir(runner)}/instance"
    return {int(n) for n in os.listdir(directory)
            if n.isdigit() and os.stat(f"{directory}/{n}").st_uid == runner.uid}


@contextmanager
def background(runner: Runner, *commands: tuple[str, ...]) -> Iterator[list[int]]:
    """Start the commands one after the other as background instances; their pids (the
    image processes), each returned once its guest daemon listens."""
    procs: list[subprocess.Popen[str]] = []
    pids: list[int] = []
    try:
        for command in commands:
            before = _own_instances(runner)
            procs.append(runner.start(*command))
            if not wait_for(lambda before=before: any(  # type: ignore[misc]
                    guest_ready(runner, p) for p in _own_instances(runner) - before),
                    timeout=20):
                kill_group(procs[-1])
                raise AssertionError(f"{command} did not start: {procs[-1].communicate()}")
            pids.append(max(p for p in _own_instances(runner) - before
                            if guest_ready(runner, p)))
        yield pids
    finally:
        for proc in procs:
            kill_group(proc)


def processes_mentioning(text: str) -> list[str]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{name}: {cmdline}")
    return found


def test_list_and_exec_as_each_instances_user(runner: Runner) -> None:
    # upstream's instance/list.py and instance/exec.py
    assert runner.ok("fim-instance", "list") == ""
    with background(runner, ("fim-root", "sleep", "30"), ("fim-exec", "sleep", "30")) as pids:
        listed = instances(runner)
        assert listed == [(0, min(pids)), (1, max(pids))]
        root_id = [i for i, p in listed if p == pids[0]][0]
        assert runner.ok("fim-instance", "exec", str(root_id), "id", "-u") == "0\n"
        assert runner.ok("fim-instance", "exec", str(1 - root_id), "id", "-u") == f"{runner.uid}\n"
        proc = runner.run("fim-instance", "exec", "0", "sh", "-c", "cat; echo err >&2; exit 7",
                          input="in\n")
        assert (proc.returncode, proc.stdout, proc.stderr) == (7, "in\n", "err\n")
        proc = runner.run("fim-instance", "exec", "1", "no-such-program")
        assert proc.returncode == 1 and "program not found" in proc.stderr
        proc = runner.run("fim-instance", "exec", "2", "true")
        assert proc.returncode == 125 and "Instance index out of bounds" in proc.stderr


@pytest.mark.parametrize(("args", "message"), [
    ((), "Missing op for 'fim-instance' (<exec|list>)"),
    (("nope",), "Invalid instance operation"),
    (("exec",), "Missing 'id' argument for 'fim-instance'"),
    (("exec", "-1", "true"), "Id argument must be a digit"),
    (("exec", "0"), "Missing 'cmd' argument for 'fim-instance'"),
    (("exec", "0", "true"), "No instances are running"),
    (("list", "x"), "Trailing arguments for fim-instance: ['x',]"),
])
def test_instance_argument_errors(runner: Runner, args: tuple[str, ...], message: str) -> None:
    proc = runner.run("fim-instance", *args)
    assert proc.returncode == 125 and message in proc.stderr


def test_portal_runs_a_host_program(runner: Runner) -> None:
    # upstream's portal/portal.py
    assert runner.run("fim-exec", "sh", "-c", "command -v python3").returncode != 0
    assert runner.ok("fim-exec", "fim_portal", *PICK, input=JSON) == "val2\n"
    proc = runner.run("fim-exec", "fim_portal", "no-such-program")
    assert proc.returncode == 1 and "program not found" in proc.stderr
    assert proc.stderr.count("\n") == 1
    proc = runner.run("fim-exec", "fim_portal")
    assert proc.returncode == 1 and "No arguments for dispatcher" in proc.stderr


def test_portal_exit_codes_and_identity(runner: Runner) -> None:
    out = runner.ok("fim-exec", "sh", "-c",
                    'for c in "exit 0" "exit 1" "exit 7" "kill -INT \\$\\$"; do '
                    'fim_portal sh -c "$c"; echo $?; done; fim_portal id -u')
    assert out.split() == ["0", "1", "7", "130", str(runner.uid)]


def test_portal_binary_stdin(runner: Runner) -> None:
    data = os.urandom(10 << 20)
    proc = subprocess.run(runner.argv(("fim-exec", "fim_portal", "cat"), None), input=data,
                          capture_output=True, cwd=runner.workspace, timeout=120)
    assert proc.returncode == 0 and proc.stdout == data


def test_portal_concurrent_calls(runner: Runner) -> None:
    out = runner.ok("fim-exec", "sh", "-c",
                    'for i in $(seq 20); do fim_portal sh -c "echo $i" & done; wait')
    assert sorted(map(int, out.split())) == list(range(1, 21))


def test_signal_reaches_the_host_program(runner: Runner) -> None:
    proc = runner.start("fim-exec", "fim_portal", "sh", "-c",
                        'trap "echo got USR1; exit 42" USR1; echo ready; '
                        "while :; do sleep 0.05; done")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        os.kill(image_pid(proc), signal.SIGUSR1)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 42 and out == "got USR1\n"
    finally:
        kill_group(proc)


def test_exec_into_an_instance_with_pid_unshared(runner: Runner) -> None:
    """The pid namespace is always unshared (docs/security.md); `fim-unshare pid`
    is still accepted, and exec into the instance works, inside its pid namespace."""
    runner.ok("fim-unshare", "add", "pid")
    with background(runner, ("fim-exec", "sleep", "30")):
        out = runner.ok("fim-instance", "exec", "0", "sh", "-c",
                        "cat /proc/[0-9]*/cmdline | tr '\\0' ' '")
        assert "sleep 30" in out and "fim-instance" not in out


def test_other_uid_is_refused(runner: Runner) -> None:
    if runner.who != "user" or os.geteuid() != 0:
        pytest.skip("root connects to an unprivileged user's instance")
    with background(runner, ("fim-exec", "sleep", "30")) as (pid,):
        sock = f"{app_dir(runner)}/instance/{pid}/portal/{portal.GUEST_SOCKET}"
        with pytest.raises(portal.PortalError, match="refused a connection from uid"):
            portal.call(sock, ["true"])


def test_tty_through_instance_exec(runner: Runner) -> None:
    with background(runner, ("fim-exec", "sleep", "30")):
        # the pty is the host's: no name inside the sandbox's own /dev/pts, still a tty
        text, code = pty_session(
            runner, ("fim-instance", "exec", "0", "bash", "-i"),
            ["[ -t 0 ] && [ -t 1 ] && echo tty=yes $((6 * 7))", "set -o | grep monitor",
             "sleep 30 &", "kill %1; sleep 0.5; jobs", "exit 5"],
            env={"TERM": "xterm"}, prompt=None, timeout=60, idle=0.5)
        assert "tty=yes 42" in text, text
        assert "on" in text.split("monitor", 2)[-1][:20], text
        assert "Terminated" in text, text
        assert code == 5


def test_no_daemon_outlives_its_instance(runner: Runner) -> None:
    """The portal's daemons end with their instance; the mount daemon (whose command
    line names the image too) within fimfs.linger.LINGER after its last run."""
    runner.ok("fim-exec", "fim_portal", "true")
    assert wait_for(lambda: not processes_mentioning(str(runner.app)), timeout=LINGER + 2)
    with background(runner, ("fim-exec", "sleep", "30")) as (pid,):
        assert runner.ok("fim-instance", "exec", "0", "true") == ""
        instance = f"/instance/{pid}/"
        assert processes_mentioning(instance)  # the guest daemon
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        assert wait_for(lambda: not processes_mentioning(instance), timeout=2), (
            processes_mentioning(instance))
        assert wait_for(lambda: not processes_mentioning(str(runner.app)),
                        timeout=LINGER + 2), (
            processes_mentioning(str(runner.app)), processes_mentioning(instance))
        print(f"daemons gone {time.monotonic() - start:.2f} s after SIGKILL")
