"""fim-recipe fetch|info|install and the remote (spec 2.16, 2.17, 14; upstream's recipe rows
of section 19 that need no internet) with a remote served by a loopback HTTP server the
test starts: no internet. Installs that run the package manager are in
tests/test_recipe_install.py."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.app import image
from tests.images import fails, ok, run, with_reserved_size

DIST = "rootfs"  # the template image's FIM_DIST, in lower case


class Remote:
    """A recipe repository on 127.0.0.1: ``put`` a recipe, read ``requests``."""

    def __init__(self, root: Path, url: str, requests: list[str]) -> None:
        self.root = root
        self.url = url
        self.requests = requests

    def put(self, name: str, recipe: object, dist: str = DIST) -> None:
        path = self.root / dist / "latest" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(recipe if isinstance(recipe, bytes) else json.dumps(recipe).encode())


def serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    """A static HTTP server on a free loopback port that records the paths asked for."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    root = tmp_path / "www"
    root.mkdir()
    server, requests = serve(root)
    yield Remote(root, f"http://127.0.0.1:{server.server_address[1]}", requests)
    server.shutdown()
    server.server_close()


def recipe(description: str = "test", packages: list[str] | None = None,
           dependencies: object = None, **extra: object) -> dict[str, object]:
    doc: dict[str, object] = {"description": description, "packages": packages or []}
    if dependencies is not None:
        doc["dependencies"] = dependencies
    return {**doc, **extra}


def cache(app: Path, name: str, dist: str = DIST) -> Path:
    return app.parent / f".{app.name}.data" / "recipes" / dist / "latest" / f"{name}.json"


def messages(text: str) -> list[str]:
    """The messages of the log lines in ``text`` (``L::origin::line::message``)."""
    return [line.split("::", 3)[-1] for line in text.splitlines() if "::" in line]


@pytest.mark.parametrize(("args", "message"), [
    ([], "Missing op for 'fim-recipe' (<fetch|info|install>)"),
    (["nope"], "Invalid recipe operation"),
    (["fetch"], "Missing recipe for operation"),
    (["info", ""], "Recipe argument is empty"),
    (["install", "a", "b"], "Trailing arguments for fim-recipe: ['b',]"),
])
def test_parse_errors(app: Path, args: list[str], message: str) -> None:
    fails(app, "fim-recipe", *args, message=message, level="C")


@pytest.mark.parametrize("op", ["fetch", "install"])
def test_no_remote(app: Path, op: str) -> None:
    cache(app, "gpu").parent.mkdir(parents=True)
    cache(app, "gpu").write_text(json.dumps(recipe()))  # install needs a remote all the same
    fails(app, "fim-recipe", op, "gpu", message="No remote URL configured", level="E")


def test_fetch(app: Path, remote: Remote) -> None:
    remote.put("gpu", recipe("GPU", ["mesa"]))
    ok(app, "fim-remote", "set", remote.url + "/")  # a trailing / is dropped
    out = ok(app, "fim-recipe", "fetch", "gpu")
    url, path = f"{remote.url}/{DIST}/latest/gpu.json", cache(app, "gpu")
    assert messages(out) == [f"Downloading recipe from '{url}'", f"Saving to '{path}'",
                             f"Successfully downloaded recipe 'gpu' to '{path}'"]
    assert json.loads(path.read_text()) == recipe("GPU", ["mesa"])
    # fetch always downloads: a cached copy is overwritten
    path.write_text(json.dumps(recipe("mock")))
    ok(app, "fim-recipe", "fetch", "gpu")
    assert json.loads(path.read_text())["description"] == "GPU"
    assert remote.requests == [f"/{DIST}/latest/gpu.json"] * 2


def test_fetch_dependencies_diamond_once_each(app: Path, remote: Remote) -> None:
    remote.put("app", recipe(dependencies=["xorg", "audio"]))
    remote.put("xorg", recipe(dependencies=["base"]))
    remote.put("audio", recipe(dependencies=["base"]))
    remote.put("base", recipe())
    ok(app, "fim-remote", "set", remote.url)
    ok(app, "fim-recipe", "fetch", "app,base")
    assert [r.rsplit("/", 1)[1] for r in remote.requests] == [
        "app.json", "xorg.json", "base.json", "audio.json"]
    for name in ("app", "xorg", "audio", "base"):
        assert cache(app, name).exists()


def test_cycle_is_reported_with_its_path(app: Path, remote: Remote) -> None:
    remote.put("a", recipe(dependencies=["b"]))
    remote.put("b", recipe(dependencies=["c"]))
    remote.put("c", recipe(dependencies=["a"]))
    ok(app, "fim-remote", "set", remote.url)
    proc = fails(app, "fim-recipe", "fetch", "a",
                 message="Cyclic dependency for recipe 'a': a -> b -> c -> a", level="E")
    assert "Failed to fetch recipe" in proc.stderr


def test_download_errors_are_one_line_and_leave_no_file(app: Path, remote: Remote) -> None:
    ok(app, "fim-remote", "set", remote.url)
    url = f"{remote.url}/{DIST}/latest"
    proc = fails(app, "fim-recipe", "fetch", "missing",
                 message=f"Could not download '{url}/missing.json': HTTP 404 File not found",
                 level="E")
    assert "Failed to fetch recipe" in proc.stderr and not cache(app, "missing").exists()
    remote.put("bad", b"{not json")
    fails(app, "fim-recipe", "fetch", "bad", message="Could not parse json file", level="E")
    remote.put("empty", b"")
    fails(app, "fim-recipe", "fetch", "empty", message="Empty json file", level="E")
    remote.put("big", b" " * ((1 << 20) + 1))
    fails(app, "fim-recipe", "fetch", "big", message=f"Could not download '{url}/big.json': "
          "larger than 1048576 bytes", level="E")
    remote.put("nodesc", {"packages": []})
    fails(app, "fim-recipe", "fetch", "nodesc", message="Missing 'description' field")
    remote.put("option", recipe(packages=["-oAPT::Update::Pre-Invoke::=touch /x"]))
    fails(app, "fim-recipe", "fetch", "option", message="Invalid package name '-oAPT")
    # a dependency that is missing fails the whole fetch
    remote.put("top", recipe(dependencies=["missing"]))
    fails(app, "fim-recipe", "fetch", "top", message="HTTP 404", level="E")
    for name in ("bad", "empty", "big", "nodesc", "option", "missing"):
        assert not cache(app, name).exists()


def test_tls_and_dns_failures(app: Path, remote: Remote) -> None:
    # TLS spoken to a plain-HTTP server: the handshake fails
    ok(app, "fim-remote", "set", remote.url.replace("http://", "https://"))
    proc = fails(app, "fim-recipe", "fetch", "gpu", message="TLS failure", level="E")
    assert len([line for line in proc.stderr.splitlines() if "TLS" in line]) == 1
    ok(app, "fim-remote", "set", "http://no-such-host.invalid")
    fails(app, "fim-recipe", "fetch", "gpu",
          message="could not resolve host 'no-such-host.invalid'", level="E")
    ok(app, "fim-remote", "set", "file:///etc")
    fails(app, "fim-recipe", "fetch", "passwd",
          message="only http:// and https:// URLs are supported", level="E")


@pytest.mark.parametrize("names", ["../x", "/etc/passwd", "a b", "a,,b", "x/../../y", ".hidden"])
@pytest.mark.parametrize("op", ["fetch", "install"])
def test_names_are_checked_before_any_request(app: Path, remote: Remote, names: str,
                                              op: str) -> None:
    remote.put("a", recipe())
    ok(app, "fim-remote", "set", remote.url)
    fails(app, "fim-recipe", op, names, message="Invalid recipe name", level="E")
    assert remote.requests == []


def test_a_dependency_that_is_a_path_is_refused(app: Path, remote: Remote) -> None:
    remote.put("a", recipe(dependencies=["../../etc/passwd"]))
    ok(app, "fim-remote", "set", remote.url)
    fails(app, "fim-recipe", "fetch", "a", level="E", message=(
        "Invalid recipe name '../../etc/passwd' (a dependency of 'a')"))
    assert len(remote.requests) == 1


def write_cache(app: Path, name: str, content: object) -> Path:
    path = cache(app, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return path


def test_info(app: Path) -> None:
    a = write_cache(app, "recipe-a", recipe("Recipe A", ["pkg1", "pkg2"], ["recipe-b"]))
    b = write_cache(app, "recipe-b", recipe("Recipe B", []))
    assert ok(app, "fim-recipe", "info", "recipe-a,recipe-b") == (
        f"Recipe: recipe-a\nLocation: {a}\nDescription: Recipe A\nPackage count: 2\n"
        "Packages:\n  - pkg1\n  - pkg2\nDependencies: 1\n  - recipe-b\n"
        f"Recipe: recipe-b\nLocation: {b}\nDescription: Recipe B\nPackage count: 0\n"
        "Packages:\nDependencies: 0\n")
    write_cache(app, "typed", recipe(dependencies="recipe-b"))  # not an array: absent
    assert ok(app, "fim-recipe", "info", "typed").endswith("Dependencies: 0\n")


@pytest.mark.parametrize(("names", "missing"), [
    ("recipe-a, recipe-b", " recipe-b"), ("recipe-a,,recipe-b", ""),
    ("nothere", "nothere"), ("../recipe-a", "../recipe-a")])
def test_info_not_found(app: Path, names: str, missing: str) -> None:
    write_cache(app, "recipe-a", recipe())
    write_cache(app, "recipe-b", recipe())
    # a name that is not one (a path, spaces) is never looked up: it is not in the cache
    write_cache(app, "../recipe-a", recipe())
    proc = fails(app, "fim-recipe", "info", names, level="E", message=(
        f"Recipe '{missing}' not found locally. Use 'fim-recipe fetch {missing}' first."))
    assert "Failed to get recipe info" in proc.stderr
    if names.startswith("recipe-a"):
        assert proc.stdout.startswith("Recipe: recipe-a\n")  # earlier output stays


@pytest.mark.parametrize(("content", "message"), [
    (b"", "Empty json file"), (b"{oops", "Could not parse json file"),
    (json.dumps({"packages": []}).encode(), "Missing 'description' field"),
    (json.dumps({"description": "x"}).encode(), "Missing 'packages' field")])
def test_info_invalid_cache(app: Path, content: bytes, message: str) -> None:
    write_cache(app, "broken", content)
    proc = fails(app, "fim-recipe", "info", "broken", message=message, level="E")
    assert "Could not load json recipe" in proc.stderr


def test_install_without_a_package_manager(app: Path, remote: Remote) -> None:
    remote.put("a", recipe(packages=["x"]))
    ok(app, "fim-remote", "set", remote.url)
    fails(app, "fim-recipe", "install", "a", level="E",
          message="The image (ROOTFS) has no package manager fim knows (apt-get, apk or pacman)")


def test_install_on_blueprint(tmp_path: Path, template: Path, remote: Remote) -> None:
    layout = image.read_layout(str(template))
    data = template.read_bytes()
    launcher = data[image.HEADER_END:layout.payload_offset].decode()
    payload = data[layout.payload_offset:layout.payload_offset + layout.payload_size]
    app = tmp_path / "app.flatimage"
    image.create(str(app), launcher, payload, dist="BLUEPRINT")
    (tmp_path / "home").mkdir()
    ok(app, "fim-remote", "set", remote.url)
    proc = run(app, "fim-recipe", "install", "a")
    assert proc.returncode == 125 and "Blueprint does not support recipes" in proc.stderr
    assert remote.requests == []


def test_install_needs_a_remote_even_when_cached(tmp_path: Path, template: Path) -> None:
    app = with_reserved_size(template, tmp_path / "app.flatimage", 1 << 20)
    fails(app, "fim-recipe", "install", "a", message="No remote URL configured")
