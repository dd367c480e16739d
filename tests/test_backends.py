"""The overlay backends and casefold in running containers (spec 11; upstream's
overlay/set.py and casefold/on.py, off.py of section 19): each backend runs the same
scenario, they share one upper directory, and casefold gives a case-insensitive view."""

from __future__ import annotations

import shutil

import pytest

from tests.containers import Runner

pytestmark = pytest.mark.fuse

BACKENDS = ["fimfs", "overlayfs", "unionfs", "bwrap"]
DEBUG_NAMES = {"fimfs": "FIMFS", "overlayfs": "FUSE_OVERLAYFS", "unionfs": "UNIONFS_FUSE",
               "bwrap": "BWRAP"}
assert BACKENDS


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_scenario(runner: Runner, backend: str) -> None:
    runner.ok("fim-overlay", "set", backend)
    assert runner.ok("fim-overlay", "show") == f"{backend.upper()}\n"
    proc = runner.run("fim-root", "sh", "-c",
                      "echo hi > /etc/new && mkdir -p /opt/d && echo x > /opt/d/f && "
                      "rm /opt/d/f && cat /etc/new && ls /opt/d && id -u",
                      env={"FIM_DEBUG": "1"})
    assert proc.returncode == 0, proc
    assert proc.stdout.splitlines()[-2:] == ["hi", "0"]
    assert f"Overlay type: {DEBUG_NAMES[backend]}" in proc.stdout
    assert (runner.data / "root" / "etc" / "new").read_text() == "hi\n"


@pytest.mark.parametrize("writer", BACKENDS)
def test_one_upper_dir_for_every_backend(runner: Runner, writer: str) -> None:
    runner.ok("fim-exec", "sh", "-c", f"echo {writer} > /home/written", env={"FIM_OVERLAY": writer})
    for reader in BACKENDS:
        out = runner.ok("fim-exec", "cat", "/home/written", env={"FIM_OVERLAY": reader})
        assert out == f"{writer}\n", reader


def test_fim_overlay_variable_overrides_and_invalid_is_ignored(runner: Runner) -> None:
    runner.ok("fim-overlay", "set", "unionfs")
    out = runner.ok("fim-exec", "true", env={"FIM_DEBUG": "1", "FIM_OVERLAY": "overlayfs"})
    assert "Overlay type: FUSE_OVERLAYFS" in out
    for value in ("", "bogus"):
        out = runner.ok("fim-exec", "true", env={"FIM_DEBUG": "1", "FIM_OVERLAY": value})
        assert "Overlay type: UNIONFS_FUSE" in out


def test_missing_backend_program_falls_back(runner: Runner) -> None:
    """A backend whose program is not installed: fim's stack, one warning."""
    tools = runner.workspace / "tools"  # what the launcher uses, without fuse-overlayfs
    tools.mkdir()
    for name in ("sh", "tail", "head", "gzip", "tar", "stat", "mkdir", "mktemp", "chmod",
                 "mv", "rm", "dirname", "ls"):
        found = shutil.which(name)
        assert found, name
        (tools / name).symlink_to(found)
    proc = runner.run("fim-exec", "echo", "ran", env={"FIM_OVERLAY": "overlayfs",
                                                      "PATH": str(tools), "FIM_DEBUG": "1"})
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "ran", proc
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("W::")]
    assert len(warnings) == 1 and "fuse-overlayfs" in warnings[0], proc.stderr
    assert "falling back to fimfs" in warnings[0] and "Overlay type: FIMFS" not in proc.stdout


@pytest.mark.parametrize("backend", ["fimfs", "unionfs", "overlayfs"])
def test_casefold_on_and_off(runner: Runner, backend: str) -> None:
    runner.ok("fim-overlay", "set", backend)
    assert runner.run("fim-exec", "stat", "/ETC").returncode != 0  # default: case-sensitive
    runner.ok("fim-casefold", "on")
    proc = runner.run("fim-exec", "sh", "-c", "mkdir -p /hElLo/WoRlD && stat -c %n /hello/world "
                      "&& ls /ETC >/dev/null && echo ok", env={"FIM_DEBUG": "1"})
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "ok", proc
    assert "casefold is enabled" in proc.stdout
    runner.ok("fim-casefold", "off")
    assert runner.run("fim-exec", "stat", "/hello/world").returncode != 0
    assert runner.ok("fim-exec", "ls", "/hElLo") == "WoRlD\n"  # case kept (not ciopfs')


def test_casefold_with_bwrap_falls_back_to_unionfs(runner: Runner) -> None:
    runner.ok("fim-overlay", "set", "bwrap")
    proc = runner.run("fim-casefold", "on")
    assert proc.returncode == 0
    out = runner.ok("fim-exec", "stat", "/ETC", env={"FIM_DEBUG": "1"})
    assert "Overlay type: UNIONFS_FUSE" in out
    proc = runner.run("fim-casefold", "off")
    assert "casefold cannot be used with bwrap overlayfs, falling back to unionfs" in proc.stderr


def test_fim_casefold_variable(runner: Runner) -> None:
    assert runner.run("fim-exec", "stat", "/BIN").returncode != 0
    runner.ok("fim-exec", "stat", "/BIN", env={"FIM_CASEFOLD": "1"})
