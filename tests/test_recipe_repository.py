"""The recipe repository images are built with (spec 2.16, 2.17, 14; upstream's
remote/show.py and remote/workflow.py rows of section 19): `fim build` sets the official
remote, and fim reads a repository laid out as the official one is
(``<dist>/latest/<name>.json`` for alpine, arch and debian; recipes indented, with blank
lines between groups of packages, dependencies, a desktop section without
integrations). The repository here is a loopback HTTP server serving recipes written
for this test in that format; the package manager is a stand-in (tests/test_desktop_run.py).
As root and as an unprivileged user, on the portable blueprint image."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.cli.commands.remote import OFFICIAL
from tests.containers import Runner
from tests.test_desktop_run import FAKE_APT, with_dist, xdg_env
from tests.test_recipe import Remote, serve

pytestmark = pytest.mark.fuse

ICON = '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>\n'
#: name -> recipe text per distribution, in the official repository's format
DEBIAN = {
    "viewer": """{
    "description": "A small image viewer",
    "packages": ["feh"],
    "dependencies": ["xorg", "gpu", "fonts"],
    "desktop": {
        "name": "Viewer (FlatImage)",
        "icon": "ICON_URL",
        "categories": ["Graphics", "Viewer"]
    }
}
""",
    "xorg": """{
    "description": "X11 client libraries",
    "packages": [
        "libx11-6",
        "libxext6",

        "x11-utils"
    ]
}
""",
    "gpu": """{
    "description": "Mesa drivers",
    "packages": [
        "libgl1-mesa-dri",

        "libvulkan1"
    ],
    "dependencies": ["xorg"]
}
""",
    "fonts": """{
    "description": "A few fonts",
    "packages": ["fonts-dejavu-core"]
}
""",
}
OTHERS = {
    "alpine": {"viewer": '{\n    "description": "viewer",\n    "packages": ["feh"]\n}\n'},
    "arch": {"viewer": '{\n    "description": "viewer",\n    "packages": ["feh"]\n}\n'},
}


@pytest.fixture
def repository(runner: Runner, tmp_path: Path) -> Iterator[Remote]:
    """The repository on 127.0.0.1, with the icon its desktop section names."""
    root = tmp_path / "www"
    os.chmod(tmp_path, 0o755)
    server, requests = serve(root)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    for dist, recipes in {"debian": DEBIAN, **OTHERS}.items():
        for name, text in recipes.items():
            path = root / dist / "latest" / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text.replace("ICON_URL", f"{url}/icons/viewer.svg"))
    (root / "icons").mkdir()
    (root / "icons" / "viewer.svg").write_text(ICON)
    yield Remote(root, url, requests)
    server.shutdown()
    server.server_close()


def test_a_built_image_has_the_official_remote(runner: Runner) -> None:
    # upstream's remote/workflow.py: default, set, show, clear, show fails
    assert runner.ok("fim-remote", "show") == f"{OFFICIAL}\n"
    runner.ok("fim-remote", "set", "https://example.com/recipes")
    assert runner.ok("fim-remote", "show") == "https://example.com/recipes\n"
    assert "Cleared remote URL" in runner.ok("fim-remote", "clear")
    proc = runner.run("fim-remote", "show")
    assert proc.returncode == 125 and "No remote URL configured" in proc.stderr


def test_recipes_are_read_from_the_distributions_directory(runner: Runner,
                                                           repository: Remote) -> None:
    runner.ok("fim-remote", "set", repository.url)
    for dist in ("ALPINE", "ARCH", "DEBIAN"):
        with_dist(runner.app, dist)
        repository.requests.clear()
        runner.ok("fim-recipe", "fetch", "viewer")
        assert repository.requests[0] == f"/{dist.lower()}/latest/viewer.json"
        cached = runner.data / "recipes" / dist.lower() / "latest" / "viewer.json"
        assert cached.read_bytes() == (repository.root / dist.lower() / "latest" /
                                       "viewer.json").read_bytes()


def test_debian_recipes_fetch_info_install(runner: Runner, repository: Remote) -> None:
    with_dist(runner.app, "DEBIAN")
    runner.file(f".{runner.app.name}.data/root/usr/bin/apt-get", FAKE_APT, mode=0o755)
    for d in (runner.data, runner.data / "root", runner.data / "root/usr",
              runner.data / "root/usr/bin"):
        os.chown(d, runner.uid, runner.gid)
    runner.ok("fim-remote", "set", repository.url + "/")
    runner.ok("fim-recipe", "fetch", "viewer")
    # depth first, each once: gpu's own dependency xorg was fetched already
    assert repository.requests == [f"/debian/latest/{n}.json"
                                   for n in ("viewer", "xorg", "gpu", "fonts")]
    cache = runner.data / "recipes" / "debian" / "latest"
    assert runner.ok("fim-recipe", "info", "viewer,gpu") == (
        f"Recipe: viewer\nLocation: {cache / 'viewer.json'}\n"
        "Description: A small image viewer\nPackage count: 1\nPackages:\n  - feh\n"
        "Dependencies: 3\n  - xorg\n  - gpu\n  - fonts\n"
        f"Recipe: gpu\nLocation: {cache / 'gpu.json'}\nDescription: Mesa drivers\n"
        "Package count: 2\nPackages:\n  - libgl1-mesa-dri\n  - libvulkan1\n"
        "Dependencies: 1\n  - xorg\n")
    proc = runner.run("fim-recipe", "install", "viewer", env=xdg_env(runner))
    assert proc.returncode == 0, proc
    apt = [line.split(" args=", 1)[1] for line in proc.stdout.splitlines()
           if line.startswith("APT uid=0 ")]
    assert apt == ["update", "install -y --no-install-recommends libx11-6 libxext6 x11-utils "
                   "libgl1-mesa-dri libvulkan1 fonts-dejavu-core feh"]
    assert "Desktop integration setup successful" in proc.stdout, proc
    entry = runner.ok("fim-desktop", "dump", "entry")
    assert entry.startswith("[Desktop Entry]\nName=Viewer (FlatImage)\n")
    runner.ok("fim-desktop", "dump", "icon", str(runner.workspace / "got"))
    assert (runner.workspace / "got.svg").read_text() == ICON
