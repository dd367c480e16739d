"""Attacks of an image someone downloads on the host, each as a regression test (issues
20 and 21; docs/security.md): as root and as a normal user, in every mode
(plain run, `fim-root`, a stored UID=0). Each asserts that the attacking program really
ran (it prints a marker first) and that the attack was denied.

The ioctl attacks need a program that makes the call: a small static C program is
compiled here with the host's C compiler and bound into the image (the blueprint has
no interpreter able to call ioctl); without a compiler those tests are skipped.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import USER, Runner, kill_group, wait_for

pytestmark = pytest.mark.fuse

#: the modes in which the program is root inside, and how each is asked for
ROOT_MODES = {
    "fim-root": (("fim-root",), ()),
    "stored UID=0": (("fim-exec",), ("UID=0",)),
}
#: capabilities root inside must not have (bits of CapEff)
DANGEROUS_CAPS = {"CAP_DAC_READ_SEARCH": 2, "CAP_LINUX_IMMUTABLE": 9, "CAP_NET_ADMIN": 12,
                  "CAP_SYS_MODULE": 16, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
                  "CAP_SYS_BOOT": 22, "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25,
                  "CAP_MAC_ADMIN": 33, "CAP_BPF": 39}

_ATTACK_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <sys/wait.h>

/* ioctl(fd, request) on the terminal fd: prints "NAME ok" or "NAME errno=N". */
static void attempt(const char *name, int fd, unsigned long request, void *arg) {
    if (ioctl(fd, request, arg) == 0) printf("%s ok\n", name);
    else printf("%s errno=%d\n", name, errno);
}

int main(int argc, char **argv) {
    char c = ' ';
    char paste = 3; /* TIOCL_PASTESEL */
    if (argc > 2 && strcmp(argv[1], "inject") == 0) {
        /* the attack itself: type argv[2] into the caller's terminal, for its shell */
        printf("ran\n");
        for (const char *p = argv[2]; *p; p++) attempt("inject", 0, TIOCSTI, (void *)p);
        fflush(stdout);
        return 0;
    }
    int fd = 0;
    printf("ran\n");
    if (argc > 1 && strcmp(argv[1], "own-pty") == 0) {
        /* a terminal of our own, made our controlling terminal: the kernel would let
           TIOCSTI through (or answer EIO with dev.tty.legacy_tiocsti=0), never EPERM */
        int master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0 || grantpt(master) || unlockpt(master) || setsid() < 0) {
            printf("setup errno=%d\n", errno);
            return 2;
        }
        fd = open(ptsname(master), O_RDWR);
        if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) != 0) {
            printf("setup errno=%d\n", errno);
            return 2;
        }
    }
    attempt("TIOCSTI", fd, TIOCSTI, &c);
    attempt("TIOCSTI-high", fd, TIOCSTI | (1UL << 32), &c);
    attempt("TIOCLINUX", fd, TIOCLINUX, &paste);
#ifdef __x86_64__
    /* the i386 system call (int 0x80: ioctl is 54 there), in a child: a kernel without
       IA32 emulation kills it */
    static char c32 = ' ';
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        long ret;
        __asm__ volatile ("int $0x80" : "=a"(ret)
                          : "a"(54L), "b"((long)fd), "c"((long)TIOCSTI), "d"((long)&c32)
                          : "memory");
        if (ret == 0) printf("TIOCSTI-i386 ok\n");
        else printf("TIOCSTI-i386 errno=%ld\n", -ret);
        fflush(stdout);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status)) printf("TIOCSTI-i386 unavailable\n");
#endif
    fflush(stdout);
    return 0;
}
"""


def _static_program(tmp_path_factory: pytest.TempPathFactory, name: str,
                    source_text: str) -> Iterator[Path]:
    """``source_text`` built as a static program in /tmp (readable by the unprivileged
    user), removed at the end; the test is skipped without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip(f"no C compiler to build {name}")
    source = tmp_path_factory.mktemp(name) / f"{name}.c"
    source.write_text(source_text)
    out = Path("/tmp") / f"fim-{name}-{os.getpid()}"
    proc = subprocess.run([cc, "-static", "-O1", "-o", str(out), str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a static program: {proc.stderr.strip()[-200:]}")
    os.chmod(out, 0o755)
    yield out
    out.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def attack_program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The static ioctl attacker."""
    yield from _static_program(tmp_path_factory, "attack", _ATTACK_C)


def _as_root(runner: Runner, mode: str) -> tuple[str, ...]:
    command, env = ROOT_MODES[mode]
    if env:
        runner.ok("fim-env", "add", *env)
    return command


# --- 1. root inside is root over the image only ----------------------------------

@pytest.mark.parametrize("mode", ROOT_MODES)
def test_root_has_no_capability_that_changes_mounts(runner: Runner, mode: str) -> None:
    command = _as_root(runner, mode)
    out = runner.ok(*command, "sh", "-c", "echo ran; id -u; grep CapEff /proc/self/status")
    lines = out.splitlines()
    assert lines[:2] == ["ran", "0"]
    caps = int(lines[2].split()[1], 16)
    assert caps & (1 << 1), "root inside keeps CAP_DAC_OVERRIDE (dpkg needs it)"
    held = [name for name, bit in DANGEROUS_CAPS.items() if caps & (1 << bit)]
    assert held == []


@pytest.mark.parametrize("mode", ROOT_MODES)
def test_root_cannot_make_the_runtime_writable(runner: Runner, mode: str) -> None:
    """`mount -o remount,rw` of fim's runtime, directly and from a nested user
    namespace (where the kernel locks the flags of the mounts it inherits)."""
    command = _as_root(runner, mode)
    script = r'''
echo ran
for d in "$FIM_DIR_APP_BIN" "$BASHRC_FILE"; do
  mount -o remount,rw,bind "$d" 2>/dev/null && echo "remounted $d"
done
unshare -Urm sh -c 'echo nested; mount -o remount,rw,bind "$FIM_DIR_APP_BIN" 2>/dev/null &&
  echo "nested remount"; touch "$FIM_DIR_APP_BIN/fim" 2>/dev/null && echo "nested write"'
umount -l "$FIM_DIR_APP_BIN" 2>/dev/null && echo unmounted
touch "$FIM_DIR_APP_BIN/fim" 2>/dev/null && echo "wrote fim"
true
'''
    before = _digest(runner)
    out = runner.ok(*command, "sh", "-c", script)
    assert out.splitlines()[0] == "ran"
    for attack in ("remounted", "nested remount", "nested write", "unmounted", "wrote fim"):
        assert attack not in out
    assert _digest(runner) == before


def _digest(runner: Runner) -> float:
    """The modification time of the runtime's fim (what a successful attack changes)."""
    app_bin = runner.ok("fim-exec", "sh", "-c", 'echo "$FIM_DIR_APP_BIN"').strip()
    return os.stat(os.path.join(app_bin, "fim")).st_mtime


# --- 2. stored variables reach no host process; the runtime's none of the container's

def test_stored_preload_reaches_no_host_process(runner: Runner, tmp_path: Path) -> None:
    """A stored LD_PRELOAD of a library that does not exist: a dynamic host process
    that got it (bwrap, a FUSE server...) says so on stderr; the program sees it."""
    runner.ok("fim-env", "add", "LD_PRELOAD=/nonexistent/fim-preload.so",
              "BASH_ENV=/nonexistent/bash_env", "GCONV_PATH=/nonexistent/gconv")
    proc = runner.run("fim-exec", "sh", "-c", 'echo "ran $LD_PRELOAD"')
    assert proc.returncode == 0, proc
    assert proc.stdout == "ran /nonexistent/fim-preload.so\n"
    assert "preload" not in proc.stderr.lower()


def test_environment_is_not_on_the_host_command_line(runner: Runner) -> None:
    """A stored token is in the program's environment, not in any host process's
    command line (any user of the host reads those) nor in bwrap's environment."""
    token = "fim-token-5d41402abc4b2a76"
    runner.ok("fim-env", "add", f"API_TOKEN={token}")
    proc = runner.start("fim-exec", "sh", "-c", 'echo "ran $API_TOKEN"; sleep 30')
    try:
        assert proc.stdout is not None and proc.stdout.readline() == f"ran {token}\n"
        seen = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            for name in ("cmdline", "environ"):
                try:
                    data = Path(f"/proc/{pid}/{name}").read_bytes()
                except OSError:
                    continue
                inside = name == "environ" and _pid_ns(pid) != _pid_ns("self")
                if token.encode() in data and not inside:
                    seen.append((pid, name, _pid_ns(pid)))
        assert seen == []
    finally:
        kill_group(proc)


def test_stored_nul_adds_no_bwrap_option(runner: Runner) -> None:
    """An author writes a NUL into stored variables (the fim-* commands cannot): bwrap
    reads the environment NUL-separated from --args, so what follows a NUL would be
    bwrap options of the image's choosing (here a --setenv; a --bind, --overlay-src...
    alike). Such variables are left out, with one line each."""
    from fim.app import config, image

    with config.edit(image.read_layout(str(runner.app))) as cfg:
        cfg.env["X"] = "a\0--setenv\0INJECTED\0yes"
        cfg.env["USER"] = "u\0--setenv\0INJECTED_USER\0yes"  # the identity's too
        cfg.env["A=B"] = "c"
    proc = runner.run("fim-exec", "sh", "-c",
                      'echo "ran ${INJECTED-no} ${INJECTED_USER-no} ${X-unset}"',
                      env={"FIM_DEBUG": "1"})  # a run shows errors only then
    assert proc.returncode == 0, proc
    assert proc.stdout.splitlines()[-1] == "ran no no unset"
    for name in ("'X'", "'USER'", "'A=B'"):
        assert f"Not setting the stored variable {name}" in proc.stdout + proc.stderr


def _pid_ns(pid: str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


#: what PyInstaller's bootloader and fim's runtime set for themselves
RUNTIME_VARIABLES = ("LD_LIBRARY_PATH", "LD_LIBRARY_PATH_ORIG", "FUSE_LIBRARY_PATH")
#: the FIM_* variables a program may see (spec 7.2, the portal's, and the caller's)
DOCUMENTED_FIM = {"FIM_VERSION", "FIM_COMMIT", "FIM_DIST", "FIM_TIMESTAMP", "FIM_BIN_SELF",
                  "FIM_OFFSET", "FIM_DIR_SELF", "FIM_DIR_GLOBAL", "FIM_DIR_APP",
                  "FIM_DIR_APP_BIN", "FIM_DIR_APP_SBIN", "FIM_DIR_INSTANCE", "FIM_PID",
                  "FIM_DIR_RUNTIME", "FIM_DIR_RUNTIME_HOST", "FIM_DIR_DATA",
                  "FIM_DIR_LAYERS", "FIM_PORTAL_DIR"}


@pytest.mark.parametrize("mode", ["fim-exec", "fim-root"])
def test_runtime_variables_stay_out(runner: Runner, mode: str) -> None:
    """Inside the container, and in a host program started through the portal."""
    for command in ((mode, "env"), (mode, "fim_portal", "env")):
        out = runner.ok(*command, input="")
        names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
        assert "PATH" in names and "HOME" in names
        leaked = [n for n in names if n in RUNTIME_VARIABLES or n.startswith("_PYI_")]
        assert leaked == [], command
        if "fim_portal" not in command:
            assert {n for n in names if n.startswith("FIM_")} <= DOCUMENTED_FIM


def test_static_busybox_runs_as_root(runner: Runner) -> None:
    """Issue 21's symptom: the blueprint's busybox wget crashed as root."""
    out = runner.ok("fim-root", "sh", "-c", "echo ran; wget --help 2>&1 | head -1")
    assert out.startswith("ran\n") and "BusyBox" in out


# --- 3. keystroke injection ------------------------------------------------------

def test_tiocsti_and_tioclinux_are_refused(runner: Runner, attack_program: Path) -> None:
    """On a terminal the program controls (the kernel would allow it there, or answer
    EIO): the filter's EPERM, also for a request with high bits set and through the
    i386 system call of an x86_64 program."""
    runner.ok("fim-bind", "add", "ro", str(attack_program), "/tmp/attack")
    for command in (("fim-exec",), ("fim-root",)):
        out = runner.ok(*command, "/tmp/attack", "own-pty")
        lines = out.splitlines()
        assert lines[:4] == ["ran", "TIOCSTI errno=1", "TIOCSTI-high errno=1",
                             "TIOCLINUX errno=1"]
        # x86_64: the same ioctl through the i386 system call (or no IA32 emulation)
        assert lines[4:] in ([], ["TIOCSTI-i386 errno=1"], ["TIOCSTI-i386 unavailable"])
        assert len(lines) == 5 or platform.machine() != "x86_64"


def test_job_control_and_injection_on_a_real_terminal(runner: Runner,
                                                      attack_program: Path) -> None:
    """The interactive shell keeps job control (no --new-session: `sleep &`, `jobs`,
    `fg`, Ctrl-Z), and the caller's terminal refuses TIOCSTI to the program."""
    runner.ok("fim-bind", "add", "ro", str(attack_program), "/tmp/attack")
    term = _Terminal(runner)
    try:
        term.expect("> ")
        term.send("/tmp/attack\n")
        assert term.expect(r"TIOCLINUX errno=(\d+)").group(1) == "1"
        assert "TIOCSTI errno=1" in term.text
        term.send("sleep 100 &\n")
        term.expect(r"\[1\] \d+")
        term.send("jobs\n")
        term.expect(r"Running\s+sleep 100")
        term.send("fg\n")
        term.expect(r"\nsleep 100")
        time.sleep(0.5)  # fg has given the terminal to the job
        term.send("\x1a")
        term.expect(r"Stopped\s+sleep 100")
        assert "no job control" not in term.text
    finally:
        term.close()  # the terminal's hang-up ends the run and its stopped job


def test_injection_into_the_callers_shell_in_tmux(runner: Runner,
                                                   attack_program: Path) -> None:
    """In a real terminal (tmux): the program types a command into the caller's
    terminal with TIOCSTI, for the host shell to run once the image exits. It is
    refused (EPERM) and the host shell runs nothing; job control works there too."""
    runner.ok("fim-bind", "add", "ro", str(attack_program), "/tmp/attack")
    pwned = runner.workspace / "pwned"
    tmux = _Tmux(runner)
    try:
        tmux.send(f"./{runner.app.name} fim-exec /tmp/attack inject 'touch {pwned}'; "
                  "echo image-exited")
        assert tmux.wait(r"(?m)^image-exited"), tmux.screen()
        screen = tmux.screen()
        assert "ran" in screen and "inject errno=1" in screen, screen
        tmux.send("echo host-shell-alive")
        assert tmux.wait(r"(?m)^host-shell-alive"), tmux.screen()
        assert not pwned.exists()
        tmux.send(f"./{runner.app.name}")  # the image's interactive bash
        assert tmux.wait(r"\] .*> $"), tmux.screen()
        tmux.send("sleep 100 &")
        tmux.send("jobs")
        assert tmux.wait(r"Running\s+sleep 100"), tmux.screen()
        tmux.send("fg")
        time.sleep(1)  # fg has given the terminal to the job
        tmux.keys("C-z")
        assert tmux.wait(r"Stopped\s+sleep 100"), tmux.screen()
        tmux.send("kill %1; exit")
        tmux.send("echo back-on-host")
        # typed ahead while the image exits: the host shell's "$" prompt may come first on
        # the line of the output (the typed line itself, "echo back-on-host", never matches)
        assert tmux.wait(r"(?m)^\$?back-on-host"), tmux.screen()
        assert "no job control" not in tmux.screen()
    finally:
        tmux.close()
        assert wait_for(lambda: not _running("sleep\0" + "100"), timeout=20)


class _Tmux:
    """A host ``sh`` in a detached tmux session of the runner's user, in its workspace."""

    def __init__(self, runner: Runner) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed")
        self.name = f"fim-{os.getpid()}-{runner.who}"
        self.prefix = ["runuser", "-u", USER, "--"] if runner.who == "user" else []
        env = " ".join(f"{k}={v}" for k, v in runner.env({"PS1": "$ "}).items())
        self._tmux("new-session", "-d", "-s", self.name, "-x", "200", "-y", "50",
                   "-c", str(runner.workspace), f"env -i {env} /bin/sh")

    def _tmux(self, *args: str) -> str:
        proc = subprocess.run([*self.prefix, "tmux", "-L", self.name, *args],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def send(self, line: str) -> None:
        self._tmux("send-keys", "-t", self.name, line, "Enter")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", self.name, *keys)

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name, "-S", "-100")

    def wait(self, pattern: str, timeout: float = 60) -> bool:
        return wait_for(lambda: re.search(pattern, self.screen().rstrip("\n") + " ")
                        is not None, timeout=timeout, step=0.2)

    def close(self) -> None:
        subprocess.run([*self.prefix, "tmux", "-L", self.name, "kill-server"],
                       capture_output=True, timeout=30)


class _Terminal:
    """The image's interactive shell on a pseudo-terminal, driven like `expect`."""

    def __init__(self, runner: Runner) -> None:
        import pty

        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.chdir(runner.workspace)
            argv = runner.argv((), None)
            os.execvp(argv[0], argv)
        self.text = ""

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        import select

        deadline = time.monotonic() + timeout
        start = len(self.text)
        while (found := re.search(pattern, self.text[start:])) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} in {self.text!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                assert chunk, f"the terminal closed before {pattern!r}: {self.text!r}"
                self.text += chunk.decode(errors="replace")
        return found

    def close(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        assert wait_for(lambda: not _running("sleep\0" + "100"), timeout=20)


# --- 4 and 5. pid and IPC namespaces; nothing outlives the run --------------------

def test_no_host_process_is_visible_or_signalable(runner: Runner) -> None:
    marker = subprocess.Popen(["sleep", "321.5"])
    try:
        script = (f"echo ran; cat /proc/[0-9]*/cmdline | tr '\\0' ' ' | grep -c 'sleep 32[1]'; "
                  f"kill -0 {marker.pid} 2>/dev/null; echo kill=$?")
        for command in ("fim-exec", "fim-root"):
            out = runner.run(command, "sh", "-c", script).stdout
            assert out.splitlines() == ["ran", "0", "kill=1"]
        assert marker.poll() is None
    finally:
        marker.kill()
        marker.wait()


def test_process_group_signal_reaches_no_host_process(runner: Runner) -> None:
    """``kill(0, SIGTERM)`` signals the caller's process group whatever the pid
    namespace: without a controlling terminal (a script, a desktop launch, cron) the
    sandbox has a session of its own, so neither the script that started the run nor
    a command started beside it (same user) gets the signal."""
    import shlex

    prefix = ["runuser", "-u", USER, "--"] if runner.who == "user" else []
    run = runner.argv(("fim-exec", "sh", "-c", "echo ran; kill -TERM 0; echo after"), None)
    script = (f"sleep 321.9 & s=$!; {shlex.join(run[len(prefix):])}; echo exit=$?; "
              "kill -0 $s && echo alive; kill $s")
    proc = subprocess.run([*prefix, "sh", "-c", script], capture_output=True, text=True,
                          cwd=runner.workspace, timeout=120, start_new_session=True)
    # the program's own group got it (143); the script and its sleep did not
    assert proc.stdout.splitlines() == ["ran", "exit=143", "alive"], proc


def test_no_host_sysv_shared_memory(runner: Runner) -> None:
    key = 0x46494D00 + os.getpid() % 256
    shm = _host_shm(key)
    try:
        out = runner.ok("fim-exec", "sh", "-c", "echo ran; cat /proc/sysvipc/shm")
        assert out.startswith("ran\n") and f"{key:d}" not in out.split()
        # the xorg permission shares the IPC namespace (MIT-SHM)
        runner.ok("fim-perms", "add", "xorg")
        env = {"DISPLAY": ":99", "XAUTHORITY": "/nonexistent"}
        out = runner.ok("fim-exec", "sh", "-c", "echo ran; cat /proc/sysvipc/shm", env=env)
        assert f"{key:d}" in out.split()
    finally:
        _remove_shm(shm)


def _host_shm(key: int) -> int:
    """A System V segment on the host (readable by anyone: shown in /proc/sysvipc)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(key, 4096, 0o1000 | 0o644)  # IPC_CREAT
    if shmid < 0:
        pytest.skip(f"shmget: {os.strerror(ctypes.get_errno())}")
    return int(shmid)


def _remove_shm(shmid: int) -> None:
    import ctypes

    ctypes.CDLL(None).shmctl(shmid, 0, None)  # IPC_RMID


def test_background_program_dies_with_the_run(runner: Runner) -> None:
    out = runner.ok("fim-exec", "sh", "-c", "sleep 1000.25 & echo ran")
    assert out == "ran\n"
    assert wait_for(lambda: not _running("1000.25"), timeout=2)


def _running(marker: str) -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_signals_still_reach_the_program(runner: Runner) -> None:
    """With the pid namespace, the run's SIGTERM goes to the program (not to pid 1)."""
    from tests.containers import image_pid

    proc = runner.start("fim-exec", "sh", "-c",
                        "trap 'echo got TERM; exit 7' TERM; echo ready; "
                        "while :; do sleep 0.1; done")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        os.kill(image_pid(proc), signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert out == "got TERM\n" and proc.returncode == 7
    finally:
        kill_group(proc)


# --- 7. host root is not root of the host ---------------------------------------

def test_root_inside_has_nothing_of_the_host(runner: Runner) -> None:
    """Always a user namespace (also for host root): root inside holds capabilities
    over the sandbox's namespaces only."""
    script = r'''
echo ran
readlink /proc/self/ns/user
cat /proc/1/root/etc/shadow 2>/dev/null && echo "read shadow"
mount -t tmpfs none /mnt 2>/dev/null && echo mounted
mount --bind /tmp /sys 2>/dev/null && echo "bound over /sys"
echo 1 > /proc/sys/kernel/sysrq 2>/dev/null && echo "wrote sysctl"
grep CapEff /proc/self/status
'''
    for command in ("fim-root", "fim-exec"):
        lines = runner.ok(command, "sh", "-c", script).splitlines()
        assert lines[0] == "ran"
        assert lines[1] != os.readlink("/proc/self/ns/user")
        assert lines[2].startswith("CapEff:"), lines
        assert not int(lines[2].split()[1], 16) & (1 << DANGEROUS_CAPS["CAP_SYS_MODULE"])


# --- 8. another local user's data directory ---------------------------------------

def test_another_users_data_directory_is_not_used(blueprint: Path, tmp_path: Path) -> None:
    """Root runs an image from a directory of another user, who made the data directory
    beside it with symbolic links in it (``instances.lock``, ``work/PID``): the run uses
    root's own data directory, nothing is created or changed where the links point; nor
    is one made in that directory (its owner could rename it and plant one)."""
    from tests.containers import remove_workspace, workspace_runner

    if os.geteuid() != 0:
        pytest.skip("needs root (the victim) and another user (the attacker)")
    attacker = workspace_runner("user", blueprint)
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir(mode=0o755)
    planted = tmp_path / "planted-lock"
    script = (f"mkdir -p .app.flatimage.data/work && "
              f"ln -s {planted} .app.flatimage.data/instances.lock && "
              f"ln -s {victim_dir} .app.flatimage.data/work/999999999")
    subprocess.run(["runuser", "-u", USER, "--", "sh", "-c", script],
                   cwd=attacker.workspace, check=True)
    root = Runner("root", attacker.workspace, 0, 0, tmp_path)
    try:
        for overlay in ("fimfs", "unionfs"):
            out = root.ok("fim-exec", "sh", "-c", 'echo "ran $FIM_DIR_DATA"',
                          env={"FIM_OVERLAY": overlay})
            assert out.startswith("ran ") and str(tmp_path) in out, out
        assert not planted.exists()
        assert victim_dir.stat().st_mode & 0o777 == 0o755
        # without one yet: none is made where that user could swap it for a link later
        shutil.rmtree(attacker.workspace / ".app.flatimage.data")
        root.ok("fim-exec", "true")
        assert not (attacker.workspace / ".app.flatimage.data").exists()
    finally:
        remove_workspace(attacker)


_EUID_C = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("euid=%d\n", (int)geteuid()); return 0; }
"""


@pytest.fixture(scope="session")
def euid_program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A static program that prints its effective uid (set-user-ID root: 0)."""
    yield from _static_program(tmp_path_factory, "euid", _EUID_C)


def test_set_user_id_files_of_the_container_reach_no_other_user(
        runner: Runner, euid_program: Path) -> None:
    """Root inside makes a set-user-ID program in the writable layer: it is a real file
    of the host (owned by host root when root runs the image), which no other user may
    reach: the data directory is 0700."""
    runner.ok("fim-bind", "add", "ro", str(euid_program), "/tmp/euid")
    out = runner.ok("fim-root", "sh", "-c",
                    "echo ran; cp /tmp/euid /suid && chmod 4755 /suid && /suid")
    assert out.splitlines()[0] == "ran"
    planted = runner.data / "root" / "suid"
    assert planted.stat().st_mode & 0o4000  # the attack's file is there...
    assert runner.data.stat().st_mode & 0o777 == 0o700  # ...out of others' reach
    if runner.who == "root":
        proc = subprocess.run(["runuser", "-u", USER, "--", str(planted)],
                              capture_output=True, text=True)
        assert "euid=0" not in proc.stdout and "Permission denied" in proc.stderr


@pytest.mark.parametrize("link", ["/oldroot{victim}", "../../../oldroot{victim}"])
def test_mount_point_through_a_link_out_of_the_root(runner: Runner, link: str) -> None:
    """bwrap makes a missing mount point before it leaves its setup root, where the
    host's root is /oldroot: a link of the image there (absolute, or climbing above
    '/') and a bind below it made the file on the host. The run is refused instead."""
    victim = runner.workspace / "victim"
    victim.mkdir()
    os.chown(victim, runner.uid, runner.gid)
    out = runner.ok("fim-exec", "sh", "-c",
                    f"echo ran; ln -s {link.format(victim=victim)} /evil && echo linked")
    assert out.splitlines() == ["ran", "linked"]
    runner.ok("fim-bind", "add", "ro", "/etc/hostname", "/evil/planted")
    proc = runner.run("fim-exec", "sh", "-c", "echo second")
    assert proc.returncode != 0 and "second" not in proc.stdout
    assert "The image makes the mount point '/evil/planted' lead out of" in proc.stderr
    assert list(victim.iterdir()) == []
