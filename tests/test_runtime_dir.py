"""Where the launcher unpacks the runtime (app/rundir.py, the launcher of
cli/build/frozen.py): a directory private to the user, never one another user made or
can write, and one where programs can run (issue 20 item 8, issue 21).

Each attack really runs, as another user (``nobody``) in a mount namespace whose /tmp
is a tmpfs of its own (tests/containers.isolated), before the victim (root, or the
unprivileged test user) runs the blueprint image. The planted ``bin/fim`` would leave
a marker in the victim's workspace if it ever ran.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest

from fim.app import image
from tests.containers import BASE_PATH, USER, Runner, ensure_user, isolated, workspace_runner

ATTACKER = "nobody"
MARKER = "planted-program-ran"


def build_id(runner: Runner) -> str:
    return image.read_layout(str(runner.app)).build_id


def victim(runner: Runner, *args: str, env: dict[str, str] | None = None) -> str:
    """The shell command running the image as the runner's user, its runtime's cache
    (the last fallback) in the workspace."""
    cache = {"XDG_CACHE_HOME": str(runner.workspace / "cache"), **(env or {})}
    return shlex.join(runner.argv(args, cache))


def keep(runner: Runner) -> list[Path]:
    """What the namespace's /tmp must still show: the workspace (and root's home)."""
    return [p for p in (runner.workspace, runner.home) if str(p).startswith("/tmp/")]


def planted_runtime(directory: str, runner: Runner) -> str:
    """Shell commands, run by the attacker, that plant a runtime of the image's build in
    ``directory`` (its bin/fim leaves the marker), open to everyone."""
    program = runner.workspace / "planted"
    program.write_text(f"#!/bin/sh\ntouch {runner.workspace}/{MARKER}\n")
    program.chmod(0o755)
    bindir = f"{directory}/app/{build_id(runner)}/bin"
    commands = f"mkdir -p {bindir} && cp {program} {bindir}/fim && chmod -R a+rwx {directory}/app"
    return f"runuser -u {ATTACKER} -- sh -c {shlex.quote(commands)}"


ATTACKS = ["another user's directory", "symbolic link to the attacker's directory",
           "symbolic link to a directory of the victim", "the victim's, writable by others"]


@pytest.mark.parametrize("attack", ATTACKS)
def test_a_squatted_runtime_location_is_passed_over(runner: Runner, attack: str) -> None:
    base = f"/tmp/fim-{runner.uid}"
    if attack == ATTACKS[0]:
        setup = planted_runtime(base, runner)
    elif attack == ATTACKS[1]:
        setup = (planted_runtime("/tmp/evil", runner)
                 + f" && runuser -u {ATTACKER} -- ln -s /tmp/evil {base}")
    elif attack == ATTACKS[2]:
        mine = runner.workspace / "mine"
        mine.mkdir(mode=0o700)
        os.chown(mine, runner.uid, runner.gid)
        setup = f"runuser -u {ATTACKER} -- ln -s {mine} {base}"
    else:
        setup = (f"mkdir -m 777 {base} && chown {runner.uid} {base} && "
                 + planted_runtime(base, runner))
    script = f"""{setup} && echo attack ready
{victim(runner, "fim-exec", "sh", "-c", 'echo "app=$FIM_DIR_APP"')}
echo "exit=$?"
"""
    proc = isolated(script, keep(runner))
    out = proc.stdout
    cache = f"{runner.workspace}/cache/fim/app/{build_id(runner)}"
    assert out == f"attack ready\napp={cache}\nexit=0\n", proc
    assert not (runner.workspace / MARKER).exists()
    assert proc.stderr == (f"W::launcher::Not using {base}: not a private directory of uid "
                           f"{runner.uid} (another user's, a symbolic link, or writable by "
                           "others)\n"), proc


def test_other_users_cannot_write_in_the_runtime_directory(runner: Runner) -> None:
    base = f"/tmp/fim-{runner.uid}"
    app = f"{base}/app/{build_id(runner)}"
    attempts = [f"mkdir {app}/instance/1", f"ln -s /tmp {app}/instance/1", f"touch {app}/bin/x",
                f"mkdir {base}/app/other"]
    tries = "\n".join(f"runuser -u {ATTACKER} -- {a} && echo 'attack worked: {a}'"
                      for a in attempts)
    script = f"""{victim(runner, "fim-exec", "true")} && echo ran
{tries}
stat -c '%a %u' {base}
[ -e {runner.workspace}/cache ] && echo "the unused fallback was made"
# the run's shared mount lingers (fimfs.linger) with the container's own modes: let it end
for i in $(seq 100); do grep -q " {base}/" /proc/self/mountinfo || break; sleep 0.1; done
find {base} ! -type l -perm /022 -printf 'writable by others: %p\\n'
"""
    proc = isolated(script, keep(runner))
    assert proc.stdout == f"ran\n700 {runner.uid}\n", proc
    assert proc.stderr.count("Permission denied") == len(attempts), proc


def test_two_users_run_one_image_at_once(blueprint: Path) -> None:
    """The unprivileged user unpacks first and is still running when root runs the same
    copy of the image: each has a runtime of its own. The user's run is then ended with
    SIGTERM (forwarded to its program: 143)."""
    from tests.containers import remove_workspace

    ensure_user()
    user = workspace_runner("user", blueprint)
    build = build_id(user)
    ws = user.workspace
    env = f"env -i PATH={BASE_PATH} LANG=C.UTF-8"
    show = shlex.quote('echo "$FIM_DIR_APP"; exec sleep 120')
    script = f"""
runuser -u {USER} -- {env} HOME={user.home} {ws}/app.flatimage fim-exec sh -c {show} \
  > {ws}/user.out 2>&1 &
user=$!
for _ in $(seq 600); do
  ls -d /tmp/fim-{user.uid}/app/{build}/instance/[0-9]* >/dev/null 2>&1 && break; sleep 0.05
done
{env} HOME=/root FIM_DIR_DATA={ws}/root-data {ws}/app.flatimage fim-exec sh -c \
  'echo "$FIM_DIR_APP"; id -u'
echo "root exit=$?"
kill -0 $user && echo "user still running"
for _ in $(seq 600); do grep -q fim {ws}/user.out && break; sleep 0.05; done
kill -TERM $(cat /proc/$user/task/$user/children)
wait $user; echo "user exit=$?"
cat {ws}/user.out
"""
    try:
        proc = isolated(script, [ws])
    finally:
        remove_workspace(user)
    assert proc.stdout == (f"/tmp/fim-0/app/{build}\n0\nroot exit=0\nuser still running\n"
                           f"user exit=143\n/tmp/fim-{user.uid}/app/{build}\n"), proc


@pytest.mark.parametrize("fallback", ["xdg", "cache"])
def test_noexec_tmp(runner: Runner, fallback: str) -> None:
    """/tmp mounted noexec: the runtime goes to $XDG_RUNTIME_DIR/fim, else the cache, with
    one notice on the run that unpacks it; the mount points of its binds stay out of the
    image's writable layer (a tmpfs at the base inside)."""
    outside = Path(tempfile.mkdtemp(prefix="fim-noexec-", dir="/var/tmp"))  # not in /tmp
    try:
        os.chmod(outside, 0o755)
        os.chown(outside, runner.uid, runner.gid)
        env = {"XDG_CACHE_HOME": str(outside / "cache")}
        if fallback == "xdg":
            xdg = outside / "xdg"
            xdg.mkdir(mode=0o700)
            os.chown(xdg, runner.uid, runner.gid)
            env["XDG_RUNTIME_DIR"] = str(xdg)
            where = f"{xdg}/fim"
        else:
            where = f"{outside}/cache/fim"
        run = victim(runner, "fim-exec", "sh", "-c", 'echo "$FIM_DIR_APP"', env=env)
        proc = isolated(f'{run}; echo "exit=$?"\n{run} 2>&1; echo "exit=$?"', keep(runner),
                        noexec=True)
        app = f"{where}/app/{build_id(runner)}"
        assert proc.stdout == f"{app}\nexit=0\n{app}\nexit=0\n", proc
        assert proc.stderr == (f"W::launcher::/tmp/fim-{runner.uid} cannot run programs "
                               f"(noexec): unpacking the runtime into {where}\n"), proc
        in_upper = runner.data / "root" / where.lstrip("/")
        assert not in_upper.exists() or not any(in_upper.iterdir())
    finally:
        shutil.rmtree(outside)


def test_the_callers_variables_reach_the_program(runner: Runner) -> None:
    """The launcher's own variables do not overwrite exported ones of the same names."""
    names = ["app", "build", "size", "off", "uid", "tmp", "b", "x", "c", "k", "unpack"]
    env = {name: f"mine-{name}" for name in names}
    script = " ".join(f'"${name}"' for name in names)
    out = runner.ok("fim-exec", "sh", "-c", f"echo {script}", env=env)
    assert out == " ".join(env.values()) + "\n"


def test_private_checks_with_lstat(tmp_path: Path) -> None:
    from fim.app import rundir

    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(mine)
    assert rundir.private(str(mine)) and rundir.private(str(mine), exact=True)
    assert not rundir.private(str(link))
    for mode, private, exact in ((0o755, True, False), (0o775, False, False),
                                 (0o757, False, False), (0o1777, False, False)):
        os.chmod(mine, mode)
        assert (rundir.private(str(mine)), rundir.private(str(mine), exact=True)) == (
            private, exact), oct(mode)
    if os.geteuid() == 0:
        os.chmod(mine, 0o700)
        os.chown(mine, 65534, 65534)
        assert not rundir.private(str(mine))


def test_candidates_in_order(tmp_path: Path) -> None:
    from fim.app import rundir

    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(xdg), "HOME": "/home/u"}
    assert rundir.candidates(7, env) == ["/tmp/fim-7", f"{xdg}/fim", "/home/u/.cache/fim"]
    os.chmod(xdg, 0o755)  # not the user's private directory: passed over
    assert rundir.candidates(7, {**env, "XDG_CACHE_HOME": "/c"}) == ["/tmp/fim-7", "/c/fim"]
    assert rundir.candidates(7, {"XDG_CACHE_HOME": "relative", "HOME": ""}) == ["/tmp/fim-7"]
