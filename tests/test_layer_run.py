"""`fim-layer commit` end to end: changes made in a running container, committed, seen by
the next runs (spec 2.10, 10; upstream's layer/commit and misc/fim_layers rows of
section 19). Every test runs as root and as an unprivileged user (tests/containers.py)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from fim.app import image
from fim.fimfs.dwarfs import DwarfsImage
from tests.containers import Runner, fim_mounts, image_mounts, image_pid, kill_group, wait_for

pytestmark = pytest.mark.fuse

SCRIPT = "/usr/bin/hello-world.sh"


def base_file(runner: Runner) -> str:
    """A regular file of the base layer."""
    return runner.ok("fim-exec", "sh", "-c",
                     'for f in /etc/*; do [ -f "$f" ] && echo "$f" && break; done').strip()


def hello(runner: Runner, text: str) -> None:
    runner.ok("fim-root", "sh", "-c", f"printf '#!/bin/sh\\necho {text}\\n' > {SCRIPT} && "
              f"chmod 755 {SCRIPT}")


def layers(runner: Runner) -> list[image.Layer]:
    return image.list_layers(image.read_layout(str(runner.app)))


def upper_files(runner: Runner) -> list[str]:
    root = runner.data / "root"
    return [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]


def test_commit_binary_keeps_writes_owners_and_deletions(runner: Runner) -> None:
    gone = base_file(runner)
    assert gone
    hello(runner, "committed")
    # an unprivileged sandbox maps only root: its files are root's (user.fim.owner)
    owner = (123, 456) if runner.who == "root" else (0, 0)
    runner.ok("fim-root", "sh", "-c", f"chown {owner[0]}:{owner[1]} {SCRIPT} && rm {gone} && "
              "mkdir -p /opt/tree && echo x > /opt/tree/x && ln /opt/tree/x /opt/tree/y")
    out = runner.ok("fim-layer", "commit", "binary")
    assert "Filesystem appended to binary without errors" in out
    assert out.splitlines()[-1].endswith("Finished erasing files")
    assert upper_files(runner) == []
    top = layers(runner)[-1]
    with DwarfsImage.from_path(runner.app, offset=top.offset, size=top.size) as fs:
        script = fs.getattr(SCRIPT)
        assert (script.uid, script.gid, stat.S_IMODE(script.mode)) == (*owner, 0o755)
        assert fs.getattr("/opt/tree/x").ino == fs.getattr("/opt/tree/y").ino
        assert "user.fim.owner" not in fs.listxattr(SCRIPT)
    shutil.rmtree(runner.data)
    assert runner.ok("fim-exec", SCRIPT) == "committed\n"
    assert runner.run("fim-exec", "test", "-e", gone).returncode == 1
    assert runner.ok("fim-exec", "cat", "/opt/tree/y") == "x\n"


def test_three_commits_the_newest_wins(runner: Runner) -> None:
    for n in (1, 2, 3):
        hello(runner, f"layer{n}")
        runner.ok("fim-layer", "commit", "binary")
        assert runner.ok("fim-exec", SCRIPT) == f"layer{n}\n"
    assert len(layers(runner)) == 4
    listed = runner.ok("fim-layer", "list").splitlines()
    assert [line.split(":")[1] for line in listed] == [str(la.offset) for la in layers(runner)]


def test_commit_layer_is_picked_up(runner: Runner) -> None:
    hello(runner, "managed")
    out = runner.ok("fim-layer", "commit", "layer")
    managed = runner.data / "layers" / "layer-000.layer"
    assert f"Layer saved to '{managed}'" in out and managed.is_file()
    assert upper_files(runner) == []
    assert runner.ok("fim-exec", SCRIPT) == "managed\n"
    assert runner.ok("fim-layer", "list").splitlines()[-1] == (
        f"1:0:{managed.stat().st_size}:{managed}")


def test_commit_file_then_add(runner: Runner) -> None:
    hello(runner, "from-file")
    dest = runner.workspace / "saved.layer"
    runner.ok("fim-layer", "commit", "file", str(dest))
    assert runner.run("fim-exec", "test", "-e", SCRIPT).returncode == 1
    runner.ok("fim-layer", "add", str(dest))
    assert runner.ok("fim-exec", SCRIPT) == "from-file\n"


def test_fim_layers_order(runner: Runner) -> None:
    built = runner.workspace / "built"
    built.mkdir()
    os.chown(built, runner.uid, runner.gid)
    for name in ("a", "b"):
        env = {"FIM_DIR_DATA": str(runner.workspace / f"data-{name}")}
        runner.ok("fim-root", "sh", "-c", f"echo {name} > /which", env=env)
        runner.ok("fim-layer", "commit", "file", str(built / f"{name}.layer"), env=env)
    assert runner.run("fim-exec", "test", "-e", "/which").returncode == 1
    a, b = built / "a.layer", built / "b.layer"
    assert runner.ok("fim-exec", "cat", "/which", env={"FIM_LAYERS": str(built)}) == "b\n"
    assert runner.ok("fim-exec", "cat", "/which", env={"FIM_LAYERS": f"{b}:{a}"}) == "a\n"
    assert runner.ok("fim-exec", "cat", "/which", env={"FIM_LAYERS": f"{built}:{a}"}) == "a\n"


def test_commit_is_refused_while_an_instance_runs(runner: Runner) -> None:
    hello(runner, "busy")
    proc = runner.start("fim-exec", "sleep", "30")
    try:
        image_pid(proc)
        assert wait_for(lambda: image_mounts(runner.app), timeout=30), fim_mounts()
        res = runner.run("fim-layer", "commit", "binary")
        assert res.returncode == 125 and "Another instance of this image" in res.stderr
    finally:
        kill_group(proc)
    assert len(layers(runner)) == 1 and upper_files(runner)
    assert wait_for(lambda: runner.run("fim-layer", "commit", "binary").returncode == 0,
                    timeout=30, step=0.5)
    assert runner.ok("fim-exec", SCRIPT) == "busy\n"


def test_undeletable_files_only_warn(runner: Runner) -> None:
    if runner.who == "root":
        pytest.skip("root deletes anything")
    runner.ok("fim-root", "sh", "-c", "mkdir /ro /rw && echo 1 > /ro/f && echo 2 > /rw/f")
    os.chown(runner.data / "root" / "ro", 0, 0)  # as upstream's test does with sudo
    res = runner.run("fim-layer", "commit", "binary")
    assert res.returncode == 0, res
    assert f"Could not remove file {runner.data}/root/ro/f" in res.stderr
    assert f"Could not remove directory {runner.data}/root/ro" in res.stderr
    assert res.stdout.splitlines()[-1].endswith("Finished erasing files")
    assert not (runner.data / "root" / "rw").exists()
    assert runner.ok("fim-exec", "cat", "/ro/f", "/rw/f") == "1\n2\n"


def test_entries_that_deny_reading_are_committed(runner: Runner) -> None:
    runner.ok("fim-root", "sh", "-c", "echo s > /secret && chmod 000 /secret && "
              "mkdir -p /closed/in && echo c > /closed/in/f && chmod 000 /closed/in")
    runner.ok("fim-layer", "commit", "binary")
    top = layers(runner)[-1]
    with DwarfsImage.from_path(runner.app, offset=top.offset, size=top.size) as fs:
        assert stat.S_IMODE(fs.getattr("/secret").mode) == 0
        assert stat.S_IMODE(fs.getattr("/closed/in").mode) == 0
        assert fs.readdir("/closed/in") and "f" in fs.readdir("/closed/in")
    assert not (runner.data / "root" / "secret").exists()
    assert not (runner.data / "root" / "closed").exists()
    if runner.who == "root":  # an unprivileged sandbox's root cannot read mode 000 files
        assert runner.ok("fim-root", "cat", "/secret", "/closed/in/f") == "s\nc\n"


def test_a_run_waits_for_a_commit(runner: Runner) -> None:
    import fcntl

    runner.ok("fim-exec", "true")  # the data directory and its lock file exist
    fd = os.open(runner.data / "instances.lock", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a commit holds (app.layercommit)
        proc = runner.start("fim-exec", "echo", "ran")
        try:
            proc.communicate(timeout=2)
            raise AssertionError("the run did not wait for the commit")
        except subprocess.TimeoutExpired:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and out == "ran\n"
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", ["overlayfs", "bwrap"])
def test_committed_layers_with_other_backends(runner: Runner, backend: str) -> None:
    gone = base_file(runner)
    hello(runner, "other-backend")
    runner.ok("fim-root", "rm", gone)
    runner.ok("fim-layer", "commit", "binary")
    env = {"FIM_OVERLAY": backend}
    res = runner.run("fim-exec", SCRIPT, env=env)
    assert (res.returncode, res.stdout) == (0, "other-backend\n"), res
    assert runner.run("fim-exec", "test", "-e", gone, env=env).returncode == 1
