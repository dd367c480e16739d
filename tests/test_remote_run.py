"""Images and layers over HTTP, end to end against nginx on loopback: `fim run URL`,
`fim mount URL`, FIM_LAYERS and `fim-layer add` with URLs; as root and as an
unprivileged user (tests/containers.py). The bytes each run fetched come from nginx's
access log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fim.app import image
from tests.containers import BASE_PATH, USER, Runner, ensure_user, open_dev_fuse
from tests.http_servers import Nginx, PlainServer
from tests.images import fim, make_layer

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[1]
EXTRA = {"opt/extra/hello": "from a remote layer\n"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx serving ``blue.flatimage`` (a blueprint with FOO=bar in its config) and
    ``extra.dwarfs`` (a layer with /opt/extra/hello)."""
    d = tmp_path_factory.mktemp("site")
    www = d / "www"
    www.mkdir()
    os.chmod(d, 0o755)
    app = www / "blue.flatimage"
    fim("build", "blueprint", "-o", str(app), "--runtime", "python")
    subprocess.run([str(app), "fim-env", "add", "FOO=bar"], check=True, capture_output=True,
                   env={"PATH": BASE_PATH, "FIM_DIR_DATA": str(d / "data")})
    shutil.copy(make_layer(d, "extra", EXTRA), www / "extra.dwarfs")
    server = Nginx(www, d / "nginx")
    yield server
    server.stop()


class Caller:
    """Runs `fim` as root or as the unprivileged user, with a home of its own (so its
    own block cache and data directories)."""

    def __init__(self, who: str) -> None:
        if who == "user":
            if os.geteuid() != 0:
                pytest.skip("the unprivileged variant needs the tests to run as root")
            entry = ensure_user()
            open_dev_fuse()
            self.uid, self.gid = entry.pw_uid, entry.pw_gid
        elif os.geteuid() != 0:
            pytest.skip("runs as root only when the tests do")
        else:
            self.uid, self.gid = 0, 0
        self.who = who
        # a pyenv Python under /root is out of the user's reach: the system one of the
        # same version then (as tests/test_owners.py does)
        version = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        self.python = version if who == "user" else sys.executable
        if not os.access(self.python, os.X_OK):
            pytest.skip(f"no {version} to run fim as {USER}")
        self.home = Path(tempfile.mkdtemp(prefix="fim-net-home-", dir="/tmp"))
        os.chmod(self.home, 0o755)
        os.chown(self.home, self.uid, self.gid)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        # fim's packages through PYTHONPATH, for the user's Python (below)
        paths = dict.fromkeys([str(REPO), sysconfig.get_paths()["purelib"],
                               sysconfig.get_paths()["platlib"]])
        return {"PATH": BASE_PATH, "HOME": str(self.home), "LANG": "C.UTF-8",
                "USER": USER if self.who == "user" else "root",
                "PYTHONPATH": os.pathsep.join(paths), **(extra or {})}

    def argv(self, args: tuple[str, ...], env: dict[str, str] | None = None) -> list[str]:
        pairs = [f"{k}={v}" for k, v in self.env(env).items()]
        prefix = ["runuser", "-u", USER, "--"] if self.who == "user" else []
        return [*prefix, "env", "-i", *pairs, self.python, "-m", "fim.cli.fim", *args]

    def fim(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(args, env), capture_output=True, text=True,
                              timeout=timeout, cwd=self.home)

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        proc = self.fim(*args, env=env)
        assert proc.returncode == 0, proc
        return proc.stdout

    def remove(self) -> None:
        subprocess.run(["rm", "-rf", str(self.home)], check=False)


@pytest.fixture(params=["root", "user"])
def caller(request: pytest.FixtureRequest) -> Iterator[Caller]:
    made = Caller(request.param)
    yield made
    made.remove()


def test_run_url_runs_the_image_as_if_local(site: Nginx, caller: Caller) -> None:
    url = f"{site.url}/blue.flatimage"
    size = (site.root / "blue.flatimage").stat().st_size
    before = site.bytes_sent()
    out = caller.ok("run", url, "fim-exec", "sh", "-c",
                    'test -x /bin/busybox && echo busybox; echo "FOO=$FOO"')
    assert "FOO=bar" in out  # the configuration, read from the remote reserved space
    assert "busybox" in out
    first = site.bytes_sent() - before
    # the payload (the image's own runtime) is never downloaded: only the layer's blocks
    assert first < size / 2, (first, size)
    caller.ok("run", url, "fim-root", "sh", "-c", "echo kept > /opt/written")
    before = site.bytes_sent()
    assert caller.ok("run", url, "fim-exec", "cat", "/opt/written") == "kept\n"
    assert site.bytes_sent() - before <= size // 100  # a second run: the cache
    data = list((caller.home / ".local/share/fim/remote").glob("blue.flatimage-*"))
    assert len(data) == 1 and (data[0] / "root/opt/written").read_text() == "kept\n"
    proc = caller.fim("run", url, "fim-perms", "add", "home")
    assert proc.returncode != 0
    assert "is a remote image: its configuration cannot be changed" in proc.stderr


def test_fim_layers_and_layer_add_take_urls(site: Nginx, caller: Caller) -> None:
    url = f"{site.url}/blue.flatimage"
    layer = f"{site.url}/extra.dwarfs"
    env = {"FIM_LAYERS": f"/nonexistent:{site.url}/missing.dwarfs:{layer}"}
    out = caller.ok("run", url, "fim-exec", "cat", "/opt/extra/hello", env=env)
    assert out == EXTRA["opt/extra/hello"]
    proc = caller.fim("run", url, "fim-layer", "list", env=env)
    assert proc.returncode == 0, proc
    assert proc.stdout.splitlines()[-1].endswith(f":{layer}")
    assert f"Skipping invalid dwarfs filesystem '{site.url}/missing.dwarfs'" in proc.stderr
    assert "HTTP 404 Not Found" in proc.stderr
    local = caller.home / "app.flatimage"
    shutil.copy(site.root / "blue.flatimage", local)
    os.chown(local, caller.uid, caller.gid)
    # through `fim run PATH`: the image's own python runtime would need urllib3 in the
    # Python it finds (the frozen runtime bundles it)
    caller.ok("run", str(local), "fim-layer", "add", layer)
    layers = image.list_layers(image.read_layout(str(local)))
    assert len(layers) == 2
    assert layers[1].size == (site.root / "extra.dwarfs").stat().st_size


def test_mount_url(site: Nginx, caller: Caller) -> None:
    mp = caller.home / "mnt"
    mp.mkdir()
    os.chown(mp, caller.uid, caller.gid)
    caller.ok("mount", f"{site.url}/extra.dwarfs", str(mp))
    try:
        # a user's mount is the user's alone (no allow_other): read it as the caller
        prefix = ["runuser", "-u", USER, "--"] if caller.who == "user" else []
        shown = subprocess.run([*prefix, "cat", str(mp / "opt/extra/hello")],
                               capture_output=True, text=True, timeout=30)
        assert shown.stdout == EXTRA["opt/extra/hello"], shown
    finally:
        caller.ok("umount", str(mp))
    proc = caller.fim("mount", f"{site.url}/missing.dwarfs", str(mp))
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"fim: {site.url}/missing.dwarfs: HTTP 404 Not Found"]


def test_offline_run_of_what_was_read(tmp_path: Path, caller: Caller) -> None:
    www = tmp_path / "www"
    www.mkdir()
    os.chmod(tmp_path, 0o755)
    fim("build", "blueprint", "-o", str(www / "b.flatimage"), "--runtime", "python")
    server = Nginx(www, tmp_path / "nginx")
    url = f"{server.url}/b.flatimage"
    try:
        assert caller.ok("run", url, "fim-exec", "echo", "online") == "online\n"
    finally:
        server.stop()
    start = time.monotonic()
    assert caller.ok("run", url, "fim-exec", "echo", "offline") == "offline\n"
    assert time.monotonic() - start < 30


def test_mount_url_server_gone_mid_run_gives_eio(tmp_path: Path, caller: Caller) -> None:
    www = tmp_path / "www"
    www.mkdir()
    os.chmod(tmp_path, 0o755)
    files = {"a/first": os.urandom(200_000).hex(), "b/second": os.urandom(200_000).hex()}
    tree = tmp_path / "tree"
    for rel, text in files.items():
        (tree / rel).parent.mkdir(parents=True)
        (tree / rel).write_text(text)
    fim("create", str(tree), str(www / "two.dwarfs"), "-S", "16")  # 64 KiB blocks
    server = Nginx(www, tmp_path / "nginx")
    mp = caller.home / "mnt"
    mp.mkdir()
    os.chown(mp, caller.uid, caller.gid)
    prefix = ["runuser", "-u", USER, "--"] if caller.who == "user" else []
    try:
        caller.ok("mount", f"{server.url}/two.dwarfs", str(mp))
        first = subprocess.run([*prefix, "cat", str(mp / "a/first")], capture_output=True,
                               text=True, timeout=60)
        assert first.stdout == files["a/first"]
        server.stop()
        start = time.monotonic()
        second = subprocess.run([*prefix, "cat", str(mp / "b/second")], capture_output=True,
                                text=True, timeout=60)
        assert second.returncode != 0
        assert "Input/output error" in second.stderr
        assert time.monotonic() - start < 30
    finally:
        server.stop()
        caller.fim("umount", str(mp))


def test_run_url_from_a_server_without_ranges(site: Nginx, caller: Caller) -> None:
    """python3 -m http.server ignores Range: the image is downloaded whole, once, into
    the cache, and runs from there."""
    plain = PlainServer(site.root)
    try:
        url = f"{plain.url}/blue.flatimage"
        out = caller.ok("run", url, "fim-exec", "sh", "-c", 'echo "FOO=$FOO"')
        assert out == "FOO=bar\n"
    finally:
        plain.stop()
    assert caller.ok("run", url, "fim-exec", "echo", "cached") == "cached\n"  # offline now


@pytest.mark.parametrize("backend", ["overlayfs", "unionfs", "bwrap"])
def test_run_url_with_the_external_backends(site: Nginx, backend: str) -> None:
    """Each layer of the URL is served by fim's reader on its own mount, then united."""
    program = {"overlayfs": "fuse-overlayfs", "unionfs": "unionfs-fuse"}.get(backend)
    if program is not None and shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    caller = Caller("root")
    try:
        proc = caller.fim("run", f"{site.url}/blue.flatimage", "fim-exec", "sh", "-c",
                          'test -x /bin/busybox && echo "FOO=$FOO"',
                          env={"FIM_OVERLAY": backend, "FIM_DEBUG": "1"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "FOO=bar"
        names = {"overlayfs": "FUSE_OVERLAYFS", "unionfs": "UNIONFS_FUSE", "bwrap": "BWRAP"}
        logged = proc.stdout + proc.stderr  # FIM_DEBUG's lines
        assert f"Overlay type: {names[backend]}" in logged
        assert "falling back to fimfs" not in logged
    finally:
        caller.remove()


def test_portable_image_takes_url_layers(site: Nginx, runner: Runner) -> None:
    """The frozen runtime (what a user downloads) bundles the HTTP client: FIM_LAYERS
    and fim-layer add take URLs, as root and as a user."""
    layer = f"{site.url}/extra.dwarfs"
    env = {"FIM_LAYERS": layer}
    assert runner.ok("fim-exec", "cat", "/opt/extra/hello", env=env) == EXTRA["opt/extra/hello"]
    runner.ok("fim-layer", "add", layer)
    assert runner.ok("fim-exec", "cat", "/opt/extra/hello") == EXTRA["opt/extra/hello"]


def test_the_inspection_tools_take_urls(site: Nginx, tmp_path: Path) -> None:
    layer = f"{site.url}/extra.dwarfs"
    assert fim("ls", layer, "/opt/extra").stdout.split() == ["hello"]
    assert fim("cat", layer, "/opt/extra/hello").stdout == EXTRA["opt/extra/hello"]
    assert "full check passed" in fim("check", layer, "--full").stdout
    fim("extract", layer, str(tmp_path / "out"))
    assert (tmp_path / "out/opt/extra/hello").read_text() == EXTRA["opt/extra/hello"]


def test_a_long_fetch_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    """`fim-layer add URL` of 10 MB under a pseudo-terminal draws tqdm's bar; without a
    terminal (every other test) nothing is drawn."""
    import pty

    www = tmp_path / "www"
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "blob").write_bytes(os.urandom(10 << 20))
    www.mkdir()
    fim("create", str(tmp_path / "tree"), str(www / "big.dwarfs"))
    app = tmp_path / "app.flatimage"
    fim("build", "blueprint", "-o", str(app), "--runtime", "python")
    server = Nginx(www, tmp_path / "nginx")
    try:
        argv = [sys.executable, "-m", "fim.cli.fim", "run", str(app), "fim-layer", "add",
                f"{server.url}/big.dwarfs"]
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - the child
            import fcntl
            import struct
            import termios

            # a terminal of 24x80 (a new pty has no size: tqdm would draw nothing)
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
            os.environ["HOME"] = str(tmp_path)
            os.execv(argv[0], argv)
        out = b""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    finally:
        server.stop()
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert b"big.dwarfs:   0%|" in out and b"/10.0M" in out, out


def test_runs_at_once_share_the_cache_and_a_new_version_is_never_mixed(
        site: Nginx, tmp_path: Path, caller: Caller) -> None:
    """Two first runs at the same time (an empty block cache); then the file changes on
    the server (one more layer, another configuration): the next run sees the new
    version only, none of the cached blocks of the old one."""
    www = tmp_path / "www"
    www.mkdir()
    os.chmod(tmp_path, 0o755)
    app = www / "b.flatimage"
    shutil.copy2(site.root / "blue.flatimage", app)
    server = Nginx(www, tmp_path / "nginx")
    url = f"{server.url}/b.flatimage"
    script = 'echo "FOO=$FOO"; cat /etc/passwd; cat /opt/extra/hello 2>/dev/null; true'
    try:
        procs = [subprocess.Popen(caller.argv(("run", url, "fim-exec", "sh", "-c", script)),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=caller.home) for _ in range(2)]
        outs = [proc.communicate(timeout=180) for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], outs
        assert outs[0][0] == outs[1][0] and outs[0][0].startswith("FOO=bar\n"), outs
        new = www / "b.new"
        shutil.copy2(app, new)
        env = {"PATH": BASE_PATH, "FIM_DIR_DATA": str(tmp_path / "data")}
        for args in (("fim-env", "add", "FOO=baz"),
                     ("fim-layer", "add", str(make_layer(tmp_path, "extra", EXTRA)))):
            subprocess.run([str(new), *args], check=True, capture_output=True, env=env)
        os.replace(new, app)
        out = caller.ok("run", url, "fim-exec", "sh", "-c", script)
        assert out == outs[0][0].replace("FOO=bar", "FOO=baz") + EXTRA["opt/extra/hello"]
    finally:
        server.stop()
