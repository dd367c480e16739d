"""Fixtures of the tests that run real single-file images (see tests/test_image_format.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import build_frozen_blueprint, remove_runtime, runner  # noqa: F401
from tests.images import fresh_copy, template_image


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One image with one layer, built once; tests get copies of it (``app``)."""
    yield from template_image(tmp_path_factory)


@pytest.fixture
def app(tmp_path: Path, template: Path) -> Path:
    """A fresh copy of the template image, as ./app.flatimage beside an empty ./home."""
    return fresh_copy(tmp_path, template)


@pytest.fixture(scope="session")
def blueprint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``fim build blueprint --runtime frozen``, built once: the image a user downloads
    (static busybox and bash, the frozen fim, bwrap, libfuse)."""
    path = build_frozen_blueprint(tmp_path_factory.mktemp("blueprint"))
    yield path
    remove_runtime(path)


@pytest.fixture(scope="session")
def debian(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``fim build debian --variant minbase``, built once (debootstrap, as root; several
    minutes). ``FIM_TEST_DEBIAN_IMAGE=/path/debian.flatimage`` reuses one built before."""
    import os
    import shutil
    import subprocess
    import sys

    given = os.environ.get("FIM_TEST_DEBIAN_IMAGE")
    if given:
        yield Path(given)
        return
    if os.geteuid() != 0:
        pytest.skip("debootstrap runs as root")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed")
    out = tmp_path_factory.mktemp("debian") / "debian.flatimage"
    proc = subprocess.run([sys.executable, "-m", "fim.cli.fim", "build", "debian", "--variant",
                           "minbase", "-o", str(out)], capture_output=True, text=True,
                          timeout=3600)
    assert proc.returncode == 0, proc.stderr
    yield out
    remove_runtime(out)
