"""Fixtures of the tests that run real single-file images (see tests/test_image_format.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import fresh_copy, template_image


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One image with one layer, built once; tests get copies of it (``app``)."""
    yield from template_image(tmp_path_factory)


@pytest.fixture
def app(tmp_path: Path, template: Path) -> Path:
    """A fresh copy of the template image, as ./app.flatimage beside an empty ./home."""
    return fresh_copy(tmp_path, template)
