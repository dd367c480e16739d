"""A real ``fim-recipe install`` of a small Debian package into a debian image (slow: the
image is built with debootstrap once per session, and apt-get reaches Debian's
mirrors). The recipe comes from a loopback remote the test serves.

As root only: installing as an unprivileged user (files dpkg chowns in a one-uid user
namespace) is another issue's. ``FIM_TEST_DEBIAN_IMAGE=/path/debian.flatimage`` reuses
an image built before (``fim build debian --variant minbase``) instead of building one.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.test_recipe import Remote, recipe, serve

pytestmark = [pytest.mark.slow, pytest.mark.fuse]


def test_install_a_debian_package(debian: Path, tmp_path: Path) -> None:
    workspace = Path(tempfile.mkdtemp(prefix="fim-deb-", dir="/tmp"))
    app = workspace / "debian.flatimage"
    shutil.copy2(debian, app)
    www = tmp_path / "www"
    www.mkdir()
    server, _ = serve(www)
    remote = Remote(www, f"http://127.0.0.1:{server.server_address[1]}", [])
    remote.put("hello", recipe("GNU hello", ["hello"]), dist="debian")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(workspace),
           "LANG": "C.UTF-8"}

    def image(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(app), *args], env=env, capture_output=True, text=True,
                              cwd=workspace, timeout=timeout)

    try:
        assert image("fim-remote", "set", remote.url).returncode == 0
        assert image("fim-exec", "sh", "-c", "command -v hello").returncode != 0
        proc = image("fim-recipe", "install", "hello", timeout=1200)
        assert proc.returncode == 0, proc
        assert "Setting up hello" in proc.stdout
        assert image("fim-exec", "hello").stdout == "Hello, world!\n"
        assert image("fim-perms", "list").stdout == ""  # the network was for that run only
    finally:
        server.shutdown()
        server.server_close()
        subprocess.run(["rm", "-rf", str(workspace)], check=False)
