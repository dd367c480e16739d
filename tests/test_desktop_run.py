"""Desktop integration, notify and recipe installs through real runs of the portable
blueprint image, as root and as an unprivileged user (tests/containers.py): the files a
run writes into XDG_DATA_HOME, a moved image, clean, the notification, and
``fim-recipe install`` with a stand-in package manager and a loopback remote. The real
Debian install is in tests/test_recipe_debian.py."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.app import image
from tests.containers import Runner
from tests.test_desktop_integration import png
from tests.test_recipe import Remote, recipe, serve

pytestmark = pytest.mark.fuse

SIZES = (16, 22, 24, 32, 48, 64, 96, 128, 256)


def setup(runner: Runner, name: str = "MyApp", integrations: object = None) -> None:
    runner.file("icon.png")
    (runner.workspace / "icon.png").write_bytes(png(64, 64))
    doc = {"name": name, "icon": "./icon.png", "categories": ["System"],
           "integrations": integrations or ["ENTRY", "MIMETYPE", "ICON"]}
    runner.file("desktop.json", json.dumps(doc))
    runner.ok("fim-desktop", "setup", "./desktop.json")


def xdg_env(runner: Runner, **extra: str) -> dict[str, str]:
    return {"XDG_DATA_HOME": str(runner.workspace / "xdg"), **extra}


def test_a_run_integrates_and_follows_a_move(runner: Runner) -> None:
    setup(runner, "My App")
    xdg = runner.workspace / "xdg"
    out = runner.ok("fim-exec", "true", env=xdg_env(runner, FIM_DEBUG="1"))
    assert f"Updating mime database '{xdg}'" in out
    entry = xdg / "applications" / "flatimage-My App.desktop"
    assert f'Exec="{runner.app}" %F\n' in entry.read_text()
    assert (xdg / "mime" / "packages" / "flatimage-My App.xml").exists()
    assert (xdg / "mime" / "application" / "flatimage_my_app.xml").exists()
    for size in SIZES:
        assert (xdg / f"icons/hicolor/{size}x{size}/apps/flatimage_My App.png").exists()
    assert os.stat(entry).st_uid == runner.uid
    out = runner.ok("fim-exec", "true", env=xdg_env(runner, FIM_DEBUG="1"))
    assert "Skipping mime database update" in out
    # a moved, renamed image: the next run points the entry and the glob at it
    moved = runner.workspace / "sub" / "renamed.flatimage"
    moved.parent.mkdir()
    os.chown(moved.parent, runner.uid, runner.gid)
    shutil.move(runner.app, moved)
    args = runner.argv(("fim-exec", "true"), xdg_env(runner, FIM_DEBUG="1"))
    args[args.index(str(runner.app))] = str(moved)
    import subprocess

    proc = subprocess.run(args, capture_output=True, text=True, timeout=120,
                          cwd=runner.workspace)
    assert proc.returncode == 0, proc
    assert "Updating mime database" in proc.stdout
    assert f'Exec="{moved}" %F\n' in entry.read_text()
    assert 'pattern="renamed.flatimage"' in (
        xdg / "mime" / "packages" / "flatimage-My App.xml").read_text()


def test_enable_then_clean(runner: Runner) -> None:
    setup(runner, integrations=["ENTRY"])
    xdg = runner.workspace / "xdg"
    runner.ok("fim-exec", "true", env=xdg_env(runner))
    assert (xdg / "applications" / "flatimage-MyApp.desktop").exists()
    assert not (xdg / "mime").exists() and not (xdg / "icons").exists()
    runner.ok("fim-desktop", "enable", "mimetype,icon")
    runner.ok("fim-exec", "true", env=xdg_env(runner))
    assert (xdg / "mime" / "packages" / "flatimage-MyApp.xml").exists()
    assert (xdg / "icons/hicolor/64x64/apps/flatimage_MyApp.png").exists()
    out = runner.ok("fim-desktop", "clean", env=xdg_env(runner))
    assert "Removed file" in out and f"Updating mime database '{xdg}'" in out
    assert not (xdg / "mime" / "packages" / "flatimage-MyApp.xml").exists()
    assert not list((xdg / "icons").rglob("*MyApp*"))
    assert (xdg / "applications" / "flatimage-MyApp.desktop").exists()  # ENTRY not enabled
    assert (xdg / "mime" / "packages" / "flatimage.xml").exists()
    runner.ok("fim-desktop", "enable", "none")
    runner.ok("fim-exec", "true", env=xdg_env(runner))
    assert not (xdg / "mime" / "packages" / "flatimage-MyApp.xml").exists()


def test_notify_with_a_stub_notify_send(runner: Runner) -> None:
    # notify-send here is a test double for a desktop: it records its argv
    record = runner.workspace / "notified"
    runner.file("bin/notify-send", f'#!/bin/sh\nprintf "%s|" "$@" > {record}\n', mode=0o755)
    os.chown(runner.workspace / "bin", runner.uid, runner.gid)
    env = xdg_env(runner, PATH=f"{runner.workspace / 'bin'}:{runner.env()['PATH']}")
    setup(runner)
    runner.ok("fim-exec", "true", env=env)
    assert not record.exists()  # notify is off
    runner.ok("fim-notify", "on")
    runner.ok("fim-exec", "true", env=env)
    icon = runner.workspace / "xdg/icons/hicolor/64x64/apps/flatimage_MyApp.png"
    assert record.read_text() == f"-i|{icon}|Started 'MyApp' FlatImage|"
    record.unlink()
    assert runner.ok("fim-exec", "echo", "hi", env=xdg_env(runner)) == "hi\n"  # none: nothing


# -- fim-recipe install with a stand-in package manager -----------------------------------

FAKE_APT = """#!/bin/sh
echo "APT uid=$(id -u) net=$(readlink /proc/self/ns/net) args=$*"
for a in "$@"; do [ "$a" = broken ] && exit 3; done
exit 0
"""


def with_dist(path: Path, dist: str) -> None:
    """Rewrite the distribution field of an image's header line (fixed width)."""
    with open(path, "r+b") as f:
        head = f.read(image.HEADER_END)
        start = len(image.SHEBANG)
        fields = head[start:-1].rstrip(b" ").split(b" ")
        fields[-2] = dist.encode()
        line = b" ".join(fields).ljust(image.HEADER_END - start - 1) + b"\n"
        assert len(line) == image.HEADER_END - start
        f.seek(start)
        f.write(line)
    assert image.read_layout(str(path)).dist == dist


@pytest.fixture
def apt_remote(runner: Runner, tmp_path: Path) -> Iterator[Remote]:
    """The runner's image as a ROOTFS with a stand-in apt-get in its writable layer, and a
    loopback remote it is set to."""
    with_dist(runner.app, "ROOTFS")
    runner.file(f".{runner.app.name}.data/root/usr/bin/apt-get", FAKE_APT, mode=0o755)
    for d in (runner.data, runner.data / "root", runner.data / "root/usr",
              runner.data / "root/usr/bin"):
        os.chown(d, runner.uid, runner.gid)
    root = tmp_path / "www"
    root.mkdir()
    os.chmod(tmp_path, 0o755)
    server, requests = serve(root)
    remote = Remote(root, f"http://127.0.0.1:{server.server_address[1]}", requests)
    runner.ok("fim-remote", "set", remote.url)
    yield remote
    server.shutdown()
    server.server_close()


def test_install_runs_the_package_manager_as_root_with_network(runner: Runner,
                                                               apt_remote: Remote) -> None:
    apt_remote.put("app", recipe(packages=["app-pkg", "lib"], dependencies=["xorg", "audio"]))
    apt_remote.put("xorg", recipe(packages=["xorg-pkg"], dependencies=["base"]))
    apt_remote.put("audio", recipe(packages=["audio-pkg", "lib"], dependencies=["base"]))
    apt_remote.put("base", recipe(packages=["base-pkg"]))
    host_net = os.readlink("/proc/self/ns/net")
    proc = runner.run("fim-recipe", "install", "app")
    assert proc.returncode == 0, proc
    apt = [line for line in proc.stdout.splitlines() if line.startswith("APT ")]
    assert apt == [f"APT uid=0 net={host_net} args=update",
                   f"APT uid=0 net={host_net} args=install -y --no-install-recommends "
                   "base-pkg xorg-pkg audio-pkg lib app-pkg"]
    # the network was for that run only
    assert runner.ok("fim-perms", "list") == ""
    assert runner.ok("fim-exec", "readlink", "/proc/self/ns/net") != f"{host_net}\n"
    # cached recipes are used; the package manager's exit code is the command's
    apt_remote.put("base", recipe(packages=["broken"]))
    proc = runner.run("fim-recipe", "install", "app")
    assert proc.returncode == 0, proc
    assert "Using existing recipe from" in proc.stdout and "broken" not in proc.stdout
    apt_remote.put("bad", recipe(packages=["broken"]))
    proc = runner.run("fim-recipe", "install", "bad")
    assert proc.returncode == 3, proc
    assert "apt-get exited with code 3" in proc.stderr


def test_install_applies_the_last_desktop_section(runner: Runner, apt_remote: Remote) -> None:
    (apt_remote.root / "logo.png").write_bytes(png(32, 32))
    local = runner.file("local.svg", '<svg xmlns="http://www.w3.org/2000/svg"/>')
    apt_remote.put("dep", recipe(desktop={"name": "Dep", "icon": str(local),
                                          "categories": ["Utility"]}))
    apt_remote.put("game", recipe(packages=["game"], dependencies=["dep"], desktop={
        "name": "Game", "icon": f"{apt_remote.url}/logo.png", "categories": ["Game"],
        "integrations": ["ENTRY", "ICON"]}))
    proc = runner.run("fim-recipe", "install", "game", env=xdg_env(runner))
    assert proc.returncode == 0, proc
    out = proc.stdout
    assert "Found desktop integration in recipe 'dep'" in out
    assert "Found desktop integration in recipe 'game'" in out
    assert "Setting up desktop integration from recipe" in out
    assert '"name": "Game"' in out and "Desktop integration setup successful" in out
    assert runner.ok("fim-desktop", "dump", "entry").startswith("[Desktop Entry]\nName=Game\n")
    runner.ok("fim-desktop", "dump", "icon", str(runner.workspace / "got"))
    assert (runner.workspace / "got.png").read_bytes() == png(32, 32)
    # a desktop section that cannot be set up only warns
    apt_remote.put("nameless", recipe(desktop={"icon": str(local), "categories": []}))
    proc = runner.run("fim-recipe", "install", "nameless")
    assert proc.returncode == 0, proc
    assert "Failed to setup desktop integration: Failed to deserialize json" in proc.stderr


def test_hostile_stored_settings_write_no_file(runner: Runner) -> None:
    """An image whose author wrote a newline and ``Exec=`` into a stored category (the
    reserved space, bypassing setup): the run goes on, no file is written, one line says
    why (issue 20 item 6)."""
    from fim.app import config

    with config.edit(image.read_layout(str(runner.app))) as cfg:
        cfg.desktop = config.Desktop("Evil", ["Network\nExec=/bin/sh -c pwned"],
                                     ["ENTRY", "MIMETYPE", "ICON"])
    xdg = runner.workspace / "xdg"
    proc = runner.run("fim-exec", "echo", "ran", env=xdg_env(runner, FIM_DEBUG="1"))
    assert proc.returncode == 0 and proc.stdout.endswith("ran\n"), proc
    refused = [line for line in proc.stderr.splitlines()
               if "Refusing to write the desktop integration" in line]
    assert refused == ["E::desktop.py::Refusing to write the desktop integration: Desktop "
                       'category "Network\\nExec=/bin/sh -c pwned" cannot contain control '
                       "characters"], proc.stderr
    assert not xdg.exists()
