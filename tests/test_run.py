"""Running programs in an image: fim-exec, fim-root, the boot command, identity,
environment, binds, exit codes, stdin, signals, a TTY, the janitor (spec 2.3, 2.4, 8, 9;
upstream's execute, root, boot/set, environment/identity and bindings rows of section 19).

Every test runs on the portable blueprint image twice: as root, and as an unprivileged
user made by the test setup (tests/containers.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fim.fimfs.linger import LINGER
from tests.containers import (
    Runner,
    fim_mounts,
    image_mounts,
    image_pid,
    kill_group,
    pty_session,
    wait_for,
)

pytestmark = pytest.mark.fuse


def test_exec_echo(runner: Runner) -> None:
    assert runner.ok("fim-exec", "echo", "test") == "test\n"


def test_exec_runs_as_the_caller_and_root_as_root(runner: Runner) -> None:
    assert runner.ok("fim-exec", "id", "-u") == f"{runner.uid}\n"
    assert runner.ok("fim-root", "id", "-u") == "0\n"
    assert runner.ok("fim-root", "sh", "-c", "echo $USER $HOME") == "root /root\n"


@pytest.mark.parametrize("code", [0, 3, 7, 255])
def test_exit_code_is_the_programs(runner: Runner, code: int) -> None:
    assert runner.run("fim-exec", "sh", "-c", f"exit {code}").returncode == code


def test_missing_program_is_127(runner: Runner) -> None:
    proc = runner.run("fim-exec", "no-such-program")
    assert proc.returncode == 127
    assert "no-such-program: command not found" in proc.stderr


@pytest.mark.parametrize("command", ["fim-exec", "fim-root"])
def test_missing_program_argument(runner: Runner, command: str) -> None:
    proc = runner.run(command)
    assert proc.returncode == 125
    assert "C::" in proc.stderr and f"Incorrect number of arguments for {command}" in proc.stderr


def test_arguments_pass_unchanged(runner: Runner) -> None:
    args = ["a b", "", "fim-exec", "$HOME", "'q'", "*"]
    out = runner.ok("fim-exec", "sh", "-c", 'for a in "$@"; do echo "[$a]"; done', "sh", *args)
    assert out == "".join(f"[{a}]\n" for a in args)


def test_stdin_is_piped_to_the_default_boot(runner: Runner) -> None:
    out = runner.ok(input="echo piped $((40 + 2))\nexit 0\n")
    assert out == "piped 42\n"


def test_boot_program_and_arguments(runner: Runner) -> None:
    # the spec's example (2.4) and upstream's boot/set.py
    runner.ok("fim-boot", "set", "echo", "hello world")
    assert runner.ok("folks people") == "hello world folks people\n"
    runner.ok("fim-boot", "set", "sh", "-c", 'echo "$0|$1"', "zero")
    assert runner.ok("one") == "zero|one\n"


def test_default_prompt_and_bashrc(runner: Runner) -> None:
    out = runner.ok("fim-exec", "sh", "-c", 'cat "$BASHRC_FILE"')
    assert out == 'export PS1="[flatimage-${FIM_DIST,,}] \\W > "\n'
    runner.ok("fim-env", "add", "PS1=custom> ")
    assert runner.ok("fim-exec", "sh", "-c", 'cat "$BASHRC_FILE"') == 'export PS1="custom> "\n'


def test_default_shell_is_the_bundled_bash(runner: Runner) -> None:
    out = runner.ok("fim-exec", "sh", "-c", 'echo "$SHELL"; tail -c 20 /etc/passwd')
    shell, passwd_tail = out.splitlines()
    assert shell.startswith(f"/tmp/fim-{runner.uid}/app/") and shell.endswith("/bin/bash")
    assert shell.endswith(passwd_tail.rsplit(":", 1)[-1][-20:])


def test_identity_from_fim_env(runner: Runner) -> None:
    # upstream's environment/identity.py
    runner.ok("fim-env", "add", "UID=5000", "GID=5000", "USER=webapp", "HOME=/app",
              "SHELL=/bin/sh")
    assert runner.ok("fim-exec", "cat", "/etc/passwd") == "webapp:x:5000:5000:webapp:/app:/bin/sh\n"
    assert runner.ok("fim-exec", "id", "-u") == "5000\n"
    assert runner.ok("fim-exec", "sh", "-c", "echo $HOME $USER") == "/app webapp\n"
    assert runner.ok("fim-root", "id", "-u") == "0\n"  # fim-root wins over a custom UID
    assert runner.ok("fim-exec", "id", "-u", env={"FIM_ROOT": "1"}) == "0\n"


def test_user_and_home_from_fim_env(runner: Runner) -> None:
    # upstream's environment/identity.py: custom user, custom home, user with PS1; by
    # root too (upstream names uid 0 root whatever fim-env says; docs/differences.md,
    # "Identity of a root caller")
    runner.ok("fim-env", "add", "USER=appuser")
    assert runner.ok("fim-exec", "whoami") == "appuser\n"
    assert runner.ok("fim-exec", "cat", "/etc/passwd").startswith(f"appuser:x:{runner.uid}:")
    runner.ok("fim-env", "set", "HOME=/opt/app/home")
    assert runner.ok("fim-exec", "sh", "-c", "echo $HOME") == "/opt/app/home\n"
    assert ":/opt/app/home:" in runner.ok("fim-exec", "cat", "/etc/passwd")
    runner.ok("fim-env", "set", "USER=myapp", "HOME=/opt/app/home", "PS1=[\\u] \\W > ")
    out = runner.ok("fim-exec", "sh", "-c", 'whoami; echo "$USER $HOME"; cat "$BASHRC_FILE"')
    assert out == 'myapp\nmyapp /opt/app/home\nexport PS1="[\\u] \\W > "\n'
    shell = runner.ok("fim-exec", "sh", "-c", "echo $SHELL").strip()
    line = f"myapp:x:{runner.uid}:{runner.gid}:myapp:/opt/app/home:{shell}\n"
    assert runner.ok("fim-exec", "cat", "/etc/passwd") == line
    # root mode is root whatever fim-env names
    assert runner.ok("fim-root", "sh", "-c", "whoami; echo $HOME") == "root\n/root\n"
    assert runner.ok("fim-exec", "whoami", env={"FIM_ROOT": "1"}) == "root\n"


def test_root_caller_without_fim_env_is_root(runner: Runner) -> None:
    # the caller's own USER and HOME name a normal user only
    out = runner.ok("fim-exec", "sh", "-c", "whoami; echo $HOME",
                    env={"USER": "someone", "HOME": "/home/someone"})
    assert out == ("root\n/root\n" if runner.who == "root" else "someone\n/home/someone\n")


def test_uid_zero_and_non_numeric_uid(runner: Runner) -> None:
    runner.ok("fim-env", "add", "UID=0")
    assert runner.ok("fim-exec", "sh", "-c", "id -u; echo $HOME") == "0\n/root\n"
    runner.ok("fim-env", "set", "UID=abc", "GID=xyz")
    assert runner.ok("fim-exec", "sh", "-c", "id -u; id -g") == f"{runner.uid}\n{runner.gid}\n"


def test_environment_inside(runner: Runner) -> None:
    runner.ok("fim-env", "add", "GREETING=hello $USER", "TERM=dumb")
    out = runner.ok("fim-exec", "sh", "-c", 'echo "$GREETING|$TERM|$FIM_DIST|$FIM_DIR_DATA"')
    user = "fimuser" if runner.who == "user" else "root"
    assert out == f"hello {user}|dumb|BLUEPRINT|{runner.data}\n"


def test_working_directory_is_kept_when_it_exists_inside(runner: Runner) -> None:
    assert runner.ok("fim-exec", "pwd", cwd="/etc") == "/etc\n"


def test_files_written_inside_land_in_the_upper_dir(runner: Runner) -> None:
    runner.ok("fim-exec", "sh", "-c", "echo data > /home/new-file")
    assert (runner.data / "root" / "home" / "new-file").read_text() == "data\n"
    assert runner.ok("fim-exec", "cat", "/home/new-file") == "data\n"


def test_fim_dir_data_keeps_separate_upper_dirs(runner: Runner) -> None:
    # upstream's misc/fim_dir_data.py
    for name in ("one", "two"):
        d = runner.workspace / name
        d.mkdir()
        os.chown(d, runner.uid, runner.gid)
        runner.ok("fim-exec", "sh", "-c", f"echo {name} > /{name}", env={"FIM_DIR_DATA": str(d)})
        assert (d / "root" / name).read_text() == f"{name}\n"
    assert not (runner.workspace / "one" / "root" / "two").exists()


def test_binds(runner: Runner) -> None:
    # upstream's bindings/add.py: ro readable, not writable; rw writable
    ro = runner.file("host/ro.txt", "read me\n")
    rw = runner.file("host/rw.txt", "old\n", mode=0o666)
    assert "Binding index is '0'" in runner.ok("fim-bind", "add", "ro", str(ro), "/ro.txt")
    runner.ok("fim-bind", "add", "rw", "$FIM_DIR_SELF/host/rw.txt", "/rw.txt")
    assert runner.ok("fim-exec", "cat", "/ro.txt") == "read me\n"
    assert runner.run("fim-exec", "sh", "-c", "echo x > /ro.txt").returncode != 0
    runner.ok("fim-exec", "sh", "-c", "echo new > /rw.txt")
    assert rw.read_text() == "new\n" and ro.read_text() == "read me\n"
    runner.ok("fim-bind", "del", "0")
    # the content is gone (bwrap leaves the empty mount point it made, as upstream's)
    assert runner.run("fim-exec", "cat", "/ro.txt").stdout == ""


def test_no_mount_or_instance_dir_is_left(runner: Runner) -> None:
    out = runner.ok("fim-exec", "sh", "-c", 'echo "$FIM_PID $FIM_DIR_INSTANCE"')
    pid, instance = out.split()
    assert instance.endswith(f"/instance/{pid}")
    assert not os.path.exists(instance)
    assert not [m for m in fim_mounts() if m.startswith(instance + "/")]


def test_sigterm_reaches_the_program(runner: Runner) -> None:
    proc = runner.start("fim-exec", "sh", "-c",
                        'trap "echo got TERM; exit 42" TERM; echo ready; '
                        "while :; do sleep 0.1; done")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        os.kill(image_pid(proc), signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 42 and out == "got TERM\n"
    finally:
        kill_group(proc)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_other_signals_reach_the_program(runner: Runner, sig: signal.Signals) -> None:
    proc = runner.start("fim-exec", "sh", "-c",
                        f'trap "exit {sig % 100 + 10}" {sig.name[3:]}; echo ready; '
                        "while :; do sleep 0.1; done")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        os.killpg(proc.pid, sig) if sig == signal.SIGINT else os.kill(image_pid(proc), sig)
        proc.communicate(timeout=30)
        assert proc.returncode in (sig % 100 + 10, 128 + sig)
    finally:
        kill_group(proc)


def test_sigkill_leaves_no_mount(runner: Runner) -> None:
    """A killed run's lease on its mount ends with it (fimfs.linger): with no other user
    the mount is gone within the linger and 2 s; the janitor (spec 12.4) or the next
    run removes its instance directory."""
    proc = runner.start("fim-exec", "sh", "-c", "echo ready; sleep 60")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        pid = image_pid(proc)
        assert image_mounts(runner.app)
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        assert wait_for(lambda: not image_mounts(runner.app), timeout=LINGER + 2), (
            image_mounts(runner.app))
        print(f"mount gone {time.monotonic() - start:.2f} s after SIGKILL")
    finally:
        kill_group(proc)
    app = runner.ok("fim-exec", "sh", "-c", 'echo "$FIM_DIR_APP"').strip()
    assert not os.path.exists(f"{app}/instance/{pid}")


def test_concurrent_runs_share_the_upper_dir(runner: Runner) -> None:
    procs = [runner.start("fim-exec", "sh", "-c",
                          f"for i in 1 2 3 4 5; do echo {n}$i >> /run-{n}; sleep 0.05; done")
             for n in ("a", "b")]
    for proc in procs:
        proc.communicate(timeout=60)
        assert proc.returncode == 0
    out = runner.ok("fim-exec", "sh", "-c", "cat /run-a /run-b")
    assert out.split() == [f"{n}{i}" for n in "ab" for i in range(1, 6)]


def test_interactive_shell_under_a_tty(runner: Runner) -> None:
    out, code = pty_session(runner, (), ["echo tty=$(tty) $((6 * 7))", "set -o | grep monitor",
                                      "sleep 30 &", "kill %1; wait %1; echo killed $?",
                                      "exit 5"])
    assert "[flatimage-blueprint] " in out, out
    # bwrap's /dev shows the terminal as /dev/console
    assert "tty=/dev/console 42" in out or "tty=/dev/pts/" in out
    assert "monitor" in out and "on" in out.split("monitor", 2)[-1][:20]
    assert "Terminated" in out and "killed 143" in out
    assert code == 5


def test_boot_without_layers_or_with_bad_config_is_one_error(runner: Runner,
                                                            tmp_path: Path) -> None:
    proc = runner.run("fim-exec", "true", env={"FIM_DIR_DATA": "/proc/not-here"})
    assert proc.returncode == 125
    assert proc.stderr.count("\n") <= 3 and "C::" in proc.stderr


def test_stdout_to_a_closed_pipe(runner: Runner) -> None:
    p = subprocess.Popen(runner.argv(("fim-exec", "sh", "-c", "yes | head -c 100000"), None),
                         stdout=subprocess.PIPE, cwd=runner.workspace)
    assert p.stdout is not None
    assert len(p.stdout.read(10)) == 10
    p.stdout.close()
    assert p.wait(timeout=30) in (0, 141, 1)


def test_bwrap_failure_is_one_line(runner: Runner) -> None:
    """A sandbox bwrap cannot build (here: a bind onto /proc) is fim's error, named,
    exit 125 — not a silent exit 1 (FlatImage issue #45)."""
    runner.ok("fim-bind", "add", "ro", "/etc/hostname", "/proc/fim-cannot-be-here")
    proc = runner.run("fim-exec", "true")
    assert proc.returncode == 125, proc
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("bwrap: ")
    assert any(line.startswith("C::") and "bwrap could not set up the sandbox" in line
               for line in lines), proc.stderr


def test_owners_set_inside_are_stored(runner: Runner) -> None:
    """Root inside a normal user's container owns the image; what it sets is stored for
    root on the host (docs/owners.md)."""
    from fim.app import image
    from fim.app.stack import build_stack

    runner.ok("fim-root", "sh", "-c", "echo x > /etc/new && chown 0:0 /etc/new && "
              "chmod 600 /etc/hosts")
    layout = image.read_layout(str(runner.app))
    layers = image.list_layers(layout)
    stack = build_stack(layers, runner.data / "root", inside=(0, 0))
    try:
        new, hosts = stack.getattr("/etc/new"), stack.getattr("/etc/hosts")
        assert (new.uid, new.gid, hosts.uid, hosts.gid) == (0, 0, 0, 0)
        assert hosts.mode & 0o777 == 0o600
    finally:
        stack.close()


def test_startup_trace_is_written_and_not_passed_inside(runner: Runner) -> None:
    """FIM_TRACE_STARTUP (bench/bench_run.py's phase table): the run's marks, in order,
    as one JSON line; the variable itself does not reach the program."""
    import json

    trace = runner.home / f"startup-{runner.uid}.trace"  # the home is shared by both runners
    trace.unlink(missing_ok=True)
    out = runner.ok("fim-exec", "sh", "-c", "echo ${FIM_TRACE_STARTUP-unset}",
                    env={"FIM_TRACE_STARTUP": str(trace)})
    assert out == "unset\n"
    lines = trace.read_text().splitlines()
    assert len(lines) == 1  # the run's own line: no forked helper writes one too
    marks = json.loads(lines[0])
    order = ["python", "imported", "configured", "mount", "mounting", "prepared", "bwrap",
             "exited", "unmounted", "cleaned"]
    assert list(marks) == order
    assert [marks[k] for k in order] == sorted(marks[k] for k in order)
