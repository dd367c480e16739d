"""`fim-update`: the update URL in the configuration, and delta updates against nginx on
loopback (the bytes fetched come from its access log). The image's python runtime is
this environment's interpreter, so these run as the tests' user only."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import BASE_PATH
from tests.http_servers import Nginx
from tests.images import fim, make_layer

NAME = "app.flatimage"


def run(app: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(app), *args], capture_output=True, text=True, timeout=300,
                          env={"PATH": BASE_PATH, "HOME": str(app.parent.parent / "home")})


def publish_sum(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256sum").write_text(f"{digest}  {path.name}\n")


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A blueprint image, as built."""
    d = tmp_path_factory.mktemp("v1")
    fim("build", "blueprint", "-o", str(d / NAME), "--runtime", "python")
    return d / NAME


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Nginx]:
    www = tmp_path / "www"
    www.mkdir()
    server = Nginx(www, tmp_path / "nginx")
    yield server
    server.stop()


def client_and_v2(v1: Path, site: Nginx, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The user's copy of v1 with its update URL set; v2 = that v1 plus one layer of
    3 MB that does not compress, published with its checksum. (client, v2, the layer)."""
    client = tmp_path / "client" / NAME
    client.parent.mkdir()
    shutil.copy2(v1, client)
    url = f"{site.url}/{NAME}"
    assert run(client, "fim-update", "set", url).returncode == 0
    v2 = site.root / NAME
    shutil.copy2(client, v2)
    layer = make_layer(tmp_path, "v2", {"opt/v2/data": os.urandom(3 << 20).hex()[: 3 << 20]})
    proc = run(v2, "fim-layer", "add", str(layer))
    assert proc.returncode == 0, proc.stderr
    publish_sum(v2)
    return client, v2, layer


def test_update_fetches_about_the_new_layer_and_keeps_the_data(
        v1: Path, site: Nginx, tmp_path: Path) -> None:
    client, v2, layer = client_and_v2(v1, site, tmp_path)
    data = client.parent / f".{NAME}.data"
    (data / "root").mkdir(parents=True, exist_ok=True)
    (data / "root" / "mine").write_text("kept\n")
    before = site.bytes_sent()
    proc = run(client, "fim-update", "run")
    assert proc.returncode == 0, proc.stderr
    fetched = site.bytes_sent() - before
    assert client.read_bytes() == v2.read_bytes()
    assert fetched <= layer.stat().st_size + (2 << 20), (fetched, layer.stat().st_size)
    assert (data / "root" / "mine").read_text() == "kept\n"
    assert os.access(client, os.X_OK)
    assert run(client, "fim-update", "run").returncode == 0  # now up to date: nothing
    assert client.read_bytes() == v2.read_bytes()
    assert sorted(p.name for p in client.parent.iterdir()) == sorted([NAME, f".{NAME}.data"])


def test_a_changed_configuration_is_fetched(v1: Path, site: Nginx, tmp_path: Path) -> None:
    client, v2, _ = client_and_v2(v1, site, tmp_path)
    assert run(v2, "fim-env", "add", "RELEASE=2").returncode == 0
    assert run(v2, "fim-perms", "add", "network").returncode == 0
    publish_sum(v2)
    proc = run(client, "fim-update", "run")
    assert proc.returncode == 0, proc.stderr
    assert client.read_bytes() == v2.read_bytes()
    assert "RELEASE=2" in run(client, "fim-env", "list").stdout


@pytest.mark.parametrize("damage", ["wrong checksum", "no checksum", "server gone"])
def test_a_failed_update_leaves_the_image_as_it_was(v1: Path, site: Nginx, tmp_path: Path,
                                                    damage: str) -> None:
    client, v2, _ = client_and_v2(v1, site, tmp_path)
    sums = Path(f"{v2}.sha256sum")
    if damage == "wrong checksum":
        sums.write_text("0" * 64 + f"  {NAME}\n")
    elif damage == "no checksum":
        sums.unlink()
    else:
        site.stop()
    old = client.read_bytes()
    (client.parent / f".{NAME}.update-999999999").write_bytes(b"of a killed update")
    proc = run(client, "fim-update", "run")
    assert proc.returncode != 0
    assert client.read_bytes() == old
    assert sorted(p.name for p in client.parent.iterdir()) == sorted(
        [NAME, f".{NAME}.data"])
    expected = {"wrong checksum": "does not match", "no checksum": "HTTP 404",
                "server gone": "cannot connect"}[damage]
    assert expected in proc.stderr
    assert "Failed to update" in proc.stderr
    assert run(client, "fim-exec", "true").returncode == 0


def test_update_url_set_show_clear(v1: Path, tmp_path: Path) -> None:
    app = tmp_path / NAME
    shutil.copy2(v1, app)
    proc = run(app, "fim-update", "show")
    assert proc.returncode != 0 and "No update URL configured" in proc.stderr
    assert run(app, "fim-update", "set", "ftp://x/y").returncode != 0
    assert run(app, "fim-update", "set", "https://example.org/app").returncode == 0
    assert run(app, "fim-update", "show").stdout == "https://example.org/app\n"
    assert run(app, "fim-update", "clear").returncode == 0
    assert run(app, "fim-update", "show").returncode != 0
    assert "fim-update <run>" in run(app, "fim-help", "update").stdout


def test_a_rebuilt_image_costs_its_new_runtime_not_its_blocks(v1: Path, site: Nginx,
                                                              tmp_path: Path) -> None:
    """v2 built again from the same root: another payload (when the build time differs),
    other metadata (the skeleton's times), the same data block, reused."""
    client = tmp_path / "client" / NAME
    client.parent.mkdir()
    shutil.copy2(v1, client)
    v2 = site.root / NAME
    fim("build", "blueprint", "-o", str(v2), "--runtime", "python")
    url = f"{site.url}/{NAME}"
    for app in (client, v2):
        assert run(app, "fim-update", "set", url).returncode == 0
    publish_sum(v2)
    before = site.bytes_sent()
    proc = run(client, "fim-update", "run")
    assert proc.returncode == 0, proc.stderr
    assert client.read_bytes() == v2.read_bytes()
    assert site.bytes_sent() - before < v2.stat().st_size // 2
