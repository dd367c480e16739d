"""The suite's own rules (pyproject.toml): they hold for every test module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_empty_parametrised_inputs_fail(tmp_path: Path) -> None:
    (tmp_path / "test_empty.py").write_text(
        "from pathlib import Path\n\nimport pytest\n\n"
        "@pytest.mark.parametrize('image', sorted(Path('/nowhere').glob('*.dwarfs')))\n"
        "def test_each(image):\n"
        "    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-c", str(REPO / "pyproject.toml"), "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0, proc.stdout
    assert "Empty parameter set" in proc.stdout, proc.stdout
