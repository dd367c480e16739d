"""`fim-update` on the portable image (the frozen runtime a user downloads), as root and
as an unprivileged user (tests/containers.py), against nginx on loopback (the bytes
fetched come from its access log) and servers that fail (tests/http_servers.py).

One v2 is built per module (the blueprint plus a 3 MB layer); each test publishes it
in a directory of its own, where it may damage it."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import BASE_PATH, IMAGE_NAME, Runner, wait_for
from tests.http_servers import CuttingServer, Nginx, free_port
from tests.images import fim, make_layer

pytestmark = pytest.mark.fuse

NAME = IMAGE_NAME
V2_DATA = "/opt/v2/data"


def sha256sum(path: Path) -> str:
    """``sha256sum``'s line for ``path``."""
    return f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"


def as_publisher(app: Path, *args: str) -> None:
    """Run the publisher's copy of an image (root, a home of its own)."""
    home = Path(tempfile.mkdtemp(prefix="fim-publisher-"))
    try:
        proc = subprocess.run([str(app), *args], capture_output=True, text=True, timeout=300,
                              env={"PATH": BASE_PATH, "HOME": str(home)})
        assert proc.returncode == 0, proc.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    d = tmp_path_factory.mktemp("site")
    os.chmod(d, 0o755)
    (d / "www").mkdir()
    server = Nginx(d / "www", d / "nginx")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def v2(blueprint: Path, site: Nginx) -> tuple[Path, int]:
    """The blueprint plus one layer of 3 MB that does not compress: (image, layer size)."""
    d = site.root.parent / "v2"
    d.mkdir()
    app = d / NAME
    shutil.copy2(blueprint, app)
    layer = make_layer(d, "v2", {V2_DATA.lstrip("/"): os.urandom(3 << 20).hex()[: 3 << 20]})
    as_publisher(app, "fim-layer", "add", str(layer))
    return app, layer.stat().st_size


def publish(site: Nginx, v2: tuple[Path, int], where: str) -> tuple[Path, str]:
    """v2 and its checksum at ``/<where>/``: (the published file, its URL)."""
    d = site.root / where
    d.mkdir(parents=True)
    app = d / NAME
    shutil.copy2(v2[0], app)
    Path(f"{app}.sha256sum").write_text(sha256sum(app))
    return app, f"{site.url}/{where}/{NAME}"


def entries(runner: Runner) -> list[str]:
    return sorted(p.name for p in runner.workspace.iterdir())


def test_update_fetches_about_the_new_layer_and_keeps_the_data(
        runner: Runner, site: Nginx, v2: tuple[Path, int]) -> None:
    served, url = publish(site, v2, f"new-layer-{runner.who}")
    as_publisher(served, "fim-update", "set", url)
    Path(f"{served}.sha256sum").write_text(sha256sum(served))
    runner.ok("fim-env", "add", "MINE=a-value-longer-than-the-publisher-has")
    runner.ok("fim-update", "set", url)  # two local slots past the publisher's lengths
    runner.ok("fim-exec", "true")  # makes the data directory
    mine = runner.data / "mine"
    mine.write_text("kept\n")
    os.chown(mine, runner.uid, runner.gid)
    before = site.bytes_sent()
    runner.ok("fim-update", "run")
    fetched = site.bytes_sent() - before
    assert runner.app.read_bytes() == served.read_bytes()
    assert fetched <= v2[1] + (2 << 20), (fetched, v2[1])
    assert mine.read_text() == "kept\n"
    assert os.access(runner.app, os.X_OK)
    assert len(runner.ok("fim-exec", "cat", V2_DATA)) == 3 << 20
    assert runner.ok("fim-update", "show") == f"{url}\n"  # the publisher's configuration
    before = site.bytes_sent()
    runner.ok("fim-update", "run")  # now up to date: only the checksum is read
    assert site.bytes_sent() - before < 200
    assert runner.app.read_bytes() == served.read_bytes()
    assert entries(runner) == sorted([NAME, f".{NAME}.data"])


def test_a_changed_configuration_is_fetched(runner: Runner, site: Nginx,
                                           v2: tuple[Path, int]) -> None:
    served, url = publish(site, v2, f"config-{runner.who}")
    as_publisher(served, "fim-env", "add", "RELEASE=2")
    Path(f"{served}.sha256sum").write_text(sha256sum(served))
    runner.ok("fim-update", "set", url)
    runner.ok("fim-update", "run")
    assert runner.app.read_bytes() == served.read_bytes()
    assert "RELEASE=2" in runner.ok("fim-env", "list")


@pytest.mark.parametrize("damage", ["wrong checksum", "no checksum", "no image",
                                    "server gone", "cut mid-body", "TLS error"])
def test_a_failed_update_leaves_the_image_as_it_was(runner: Runner, site: Nginx,
                                                    v2: tuple[Path, int], damage: str) -> None:
    served, url = publish(site, v2, f"{damage.replace(' ', '-')}-{runner.who}")
    sums = Path(f"{served}.sha256sum")
    other: CuttingServer | Nginx | None = None
    if damage == "wrong checksum":
        sums.write_text("0" * 64 + f"  {NAME}\n")
    elif damage == "no checksum":
        sums.unlink()
    elif damage == "no image":
        served.unlink()
    elif damage == "server gone":
        url = f"http://127.0.0.1:{free_port()}/{NAME}"
    elif damage == "TLS error":  # a self-signed certificate
        other = Nginx(site.root, served.parent / "tls", tls=True)
        url = f"{other.url}/{served.parent.name}/{NAME}"
    else:
        other = CuttingServer(served.read_bytes(), extra={"/file.sha256sum": sums.read_bytes()})
        url = other.url
    try:
        runner.ok("fim-update", "set", url)
        old = runner.app.read_bytes()
        stale = runner.workspace / f".{NAME}.update-999999999"
        stale.write_bytes(b"of a killed update")
        proc = runner.run("fim-update", "run", timeout=120)
    finally:
        if other is not None:
            other.stop()
    assert proc.returncode != 0
    assert runner.app.read_bytes() == old
    assert not [e for e in entries(runner) if ".update-" in e]
    expected = {"wrong checksum": "does not match", "no checksum": "HTTP 404",
                "no image": "HTTP 404", "server gone": "cannot connect",
                "cut mid-body": "connection lost",
                "TLS error": "certificate verify failed"}[damage]
    assert expected in proc.stderr, proc.stderr
    assert "Failed to update" in proc.stderr
    assert "Traceback" not in proc.stderr
    runner.ok("fim-exec", "true")


@pytest.mark.slow
def test_a_killed_update_leaves_the_old_image_working(runner: Runner, site: Nginx,
                                                      v2: tuple[Path, int]) -> None:
    """Killed half-way through the layer (nginx sends /slow/ at 256 KB/s): the old image
    runs; the next update removes the partial file and completes."""
    served, slow = publish(site, v2, f"slow/kill-{runner.who}")
    _, url = publish(site, v2, f"after-kill-{runner.who}")
    runner.ok("fim-update", "set", slow)
    old = runner.app.read_bytes()
    proc = runner.start("fim-update", "run")
    try:
        assert wait_for(lambda: any(p.stat().st_size > 1 << 20 for p in
                                    runner.workspace.glob(f".{NAME}.update-*")), timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    partial = list(runner.workspace.glob(f".{NAME}.update-*"))
    assert partial  # SIGKILL: nothing cleaned up
    assert runner.app.read_bytes() == old
    runner.ok("fim-exec", "true")
    runner.ok("fim-update", "set", url)
    runner.ok("fim-update", "run")
    assert runner.app.read_bytes() == served.read_bytes()
    assert entries(runner) == sorted([NAME, f".{NAME}.data"])


def test_update_url_set_show_clear(runner: Runner) -> None:
    proc = runner.run("fim-update", "show")
    assert proc.returncode != 0 and "No update URL configured" in proc.stderr
    assert runner.run("fim-update", "set", "ftp://x/y").returncode != 0
    runner.ok("fim-update", "set", "https://example.org/app")
    assert runner.ok("fim-update", "show") == "https://example.org/app\n"
    runner.ok("fim-update", "clear")
    assert runner.run("fim-update", "show").returncode != 0
    assert "fim-update <run>" in runner.ok("fim-help", "update")
    assert ",unshare,update,version}" in runner.ok("fim-help")


def test_a_rebuilt_image_costs_its_new_runtime_not_its_blocks(site: Nginx,
                                                              tmp_path: Path) -> None:
    """v2 built again from the same root (the python runtime: quick to build): another
    payload (when the build time differs), other metadata (the skeleton's times), the
    same data block, reused. As root: one build serves as both versions."""
    if os.geteuid() != 0:
        pytest.skip("the published file is served by root's nginx")
    client = tmp_path / NAME
    fim("build", "blueprint", "-o", str(client), "--runtime", "python")
    (site.root / "rebuilt").mkdir()
    v2 = site.root / "rebuilt" / NAME
    fim("build", "blueprint", "-o", str(v2), "--runtime", "python")
    url = f"{site.url}/rebuilt/{NAME}"
    for app in (client, v2):
        as_publisher(app, "fim-update", "set", url)
    Path(f"{v2}.sha256sum").write_text(sha256sum(v2))
    before = site.bytes_sent()
    as_publisher(client, "fim-update", "run")
    assert client.read_bytes() == v2.read_bytes()
    assert site.bytes_sent() - before < v2.stat().st_size // 2


def test_leftovers_past_the_publishers_configuration_are_fetched(
        runner: Runner, site: Nginx, v2: tuple[Path, int]) -> None:
    """An image written by an older fim may hold bytes of an old configuration outside
    the slots' contents, where the update assumes zeros: fetched then, in place."""
    from fim.app import image

    served, url = publish(site, v2, f"leftovers-{runner.who}")
    layout = image.read_layout(str(served))
    with open(served, "r+b") as f:
        f.seek(layout.reserved_offset + layout.reserved_size - 4096)
        f.write(b"an old configuration")
    Path(f"{served}.sha256sum").write_text(sha256sum(served))
    runner.ok("fim-update", "set", url)
    before = site.bytes_sent()
    runner.ok("fim-update", "run")
    assert runner.app.read_bytes() == served.read_bytes()
    assert site.bytes_sent() - before <= v2[1] + layout.reserved_size + (2 << 20)
