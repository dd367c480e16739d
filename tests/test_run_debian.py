"""A real distribution in a container (slow: a debootstrap image, built once per session,
and Debian's package registry): `fim-root apt-get install` with the network permission,
as root and as a normal user (one-uid user namespace: docs/building.md)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import Runner, remove_workspace, workspace_runner

pytestmark = [pytest.mark.slow, pytest.mark.fuse]


@pytest.fixture(params=["root", "user"])
def deb(request: pytest.FixtureRequest, debian: Path) -> Iterator[Runner]:
    made = workspace_runner(request.param, debian)
    yield made
    remove_workspace(made)


def test_apt_get_install(deb: Runner) -> None:
    assert deb.run("fim-exec", "sh", "-c", "command -v cowsay").returncode != 0
    deb.ok("fim-perms", "add", "network")
    proc = deb.run("fim-root", "sh", "-c", "apt-get update -qq && "
                   "apt-get install -y -qq --no-install-recommends cowsay", timeout=1200)
    assert proc.returncode == 0, proc
    out = deb.ok("fim-exec", "/usr/games/cowsay", "moo")
    assert "< moo >" in out
    # the files dpkg wrote are root's in the stored layer (owners kept for a commit)
    assert deb.ok("fim-root", "stat", "-c", "%u:%g %a", "/usr/games/cowsay") == "0:0 755\n"


def test_identity_and_shell_of_a_real_root(deb: Runner) -> None:
    assert deb.ok("fim-exec", "id", "-u") == f"{deb.uid}\n"
    assert deb.ok("fim-root", "whoami") == "root\n"
    assert deb.ok(input="cat /etc/debian_version >/dev/null && echo ok\n") == "ok\n"


def test_instances_and_portal_in_a_real_root(deb: Runner) -> None:
    """Issue 9's rows on a glibc root: `fim-instance exec` into a running debian
    container and `fim_portal` from it to the host."""
    from tests.test_instance import background, instances

    with background(deb, ("fim-root", "sleep", "60")) as pids:
        assert [p for _, p in instances(deb)] == pids
        assert deb.ok("fim-instance", "exec", "0", "id", "-u") == "0\n"
        assert deb.ok("fim-instance", "exec", "0", "cat", "/etc/debian_version").strip()
    out = deb.ok("fim-exec", "fim_portal", "sh", "-c", "test -e /etc/fim-host-marker || "
                 "uname -s", input="")
    assert out == "Linux\n"
    proc = deb.run("fim-exec", "fim_portal", "no-such-program-on-the-host")
    assert proc.returncode == 1 and "program not found" in proc.stderr


def test_the_cowsay_story(deb: Runner) -> None:
    """Issue 10's story, the README's example: install as root inside, commit the upper
    into the image, drop the writable data, run from the committed layer, then make the
    image an app with its own boot command."""
    import shutil

    deb.ok("fim-perms", "add", "network")
    proc = deb.run("fim-root", "sh", "-c", "apt-get update -qq && "
                   "apt-get install -y -qq --no-install-recommends cowsay", timeout=1200)
    assert proc.returncode == 0, proc
    deb.ok("fim-layer", "commit", "binary", timeout=1200)
    shutil.rmtree(deb.data)
    assert "< hello >" in deb.ok("fim-exec", "/usr/games/cowsay", "hello")
    deb.ok("fim-boot", "set", "/usr/games/cowsay")
    app = deb.workspace / "cowsay.flatimage"
    deb.app.rename(app)
    env = deb.env()
    argv = deb.argv(("moo",), None)
    argv[argv.index(str(deb.app))] = str(app)
    out = subprocess.run(argv, capture_output=True, text=True, cwd=deb.workspace, env=env,
                         timeout=120)
    assert out.returncode == 0 and "< moo >" in out.stdout, out


def test_programs_load_the_images_own_libraries(deb: Runner) -> None:
    """Issue 21: nothing of fim's runtime (its LD_LIBRARY_PATH) reaches the program, so
    apt-get loads the image's libz and libzstd, not the runtime's copies."""
    for command in ("fim-exec", "fim-root"):
        out = deb.ok(command, "sh", "-c", "echo ran; ldd /usr/bin/apt-get")
        lines = out.splitlines()
        assert lines[0] == "ran"
        resolved = [line.split("=>")[1].split()[0] for line in lines if "=>" in line]
        assert any("libz" in path for path in resolved), out
        assert all(path.startswith(("/lib", "/usr/lib")) for path in resolved), out


def test_keystroke_injection_is_refused(deb: Runner) -> None:
    """TIOCSTI from the image's own perl on a terminal it controls: the seccomp filter's
    EPERM (the kernel allows it there, or answers EIO without legacy TIOCSTI)."""
    script = ("use POSIX; $| = 1; $SIG{HUP} = 'IGNORE'; print qq(ran\\n); "
              "open(my $m, '+<', '/dev/ptmx') or die; "
              "my $z = pack('i', 0); ioctl($m, 0x40045431, $z) or die;  # TIOCSPTLCK\n"
              "my $n = pack('i', 0); ioctl($m, 0x80045430, $n) or die;  # TIOCGPTN\n"
              "POSIX::setsid(); open(my $s, '+<', '/dev/pts/' . unpack('i', $n)) or die; "
              "my $c = 'x'; my $ok = ioctl($s, 0x5412, $c); "
              "print $ok ? qq(ok\\n) : ($!+0) . qq(\\n);")
    for command in ("fim-exec", "fim-root"):
        assert deb.ok(command, "perl", "-e", script) == "ran\n1\n"
