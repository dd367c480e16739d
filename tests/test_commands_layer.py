"""`fim-layer list` (discovery order of spec 10.1, FIM_LAYERS of 10.2), `fim-layer add`,
and the errors of spec 2.10."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fim.app import image
from tests.images import fails, make_layer, ok, run


@pytest.fixture(scope="module")
def dwarfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_layer(tmp_path_factory.mktemp("layer"), "extra", {"x": "extra"})


def embedded(app: Path) -> list[str]:
    return [f"{i}:{la.offset}:{la.size}:{app}"
            for i, la in enumerate(image.list_layers(image.read_layout(str(app))))]


def test_list_embedded(app: Path) -> None:
    lines = embedded(app)
    assert len(lines) == 1 and lines[0].startswith("0:")
    assert ok(app, "fim-layer", "list").splitlines() == lines


def test_list_discovery_order(app: Path, dwarfs: Path, tmp_path: Path) -> None:
    managed = tmp_path / ".app.flatimage.data" / "layers"
    managed.mkdir(parents=True)
    shutil.copy(dwarfs, managed / "layer-001.layer")
    shutil.copy(dwarfs, managed / "layer-000.layer")
    (managed / "subdir").mkdir()
    in_dir = tmp_path / "fromdir"
    in_dir.mkdir()
    shutil.copy(dwarfs, in_dir / "b.layer")
    os.symlink(dwarfs, in_dir / "a.layer")  # a symlink to a file counts
    (in_dir / "nested").mkdir()
    shutil.copy(dwarfs, in_dir / "nested" / "ignored.layer")
    size = dwarfs.stat().st_size
    env = {"FIM_LAYERS": f"{dwarfs}:$D:/no/such/file::", "D": str(in_dir)}
    proc = run(app, "fim-layer", "list", env=env)
    assert (proc.returncode, proc.stderr) == (0, ""), proc
    assert proc.stdout.splitlines() == [
        *embedded(app),
        f"1:0:{size}:{dwarfs}",
        f"2:0:{size}:{in_dir}/a.layer",
        f"3:0:{size}:{in_dir}/b.layer",
        f"4:0:{size}:{managed}/layer-000.layer",
        f"5:0:{size}:{managed}/layer-001.layer",
    ]


def test_list_skips_invalid_files(app: Path, tmp_path: Path) -> None:
    managed = tmp_path / ".app.flatimage.data" / "layers"
    managed.mkdir(parents=True)
    (managed / "junk.layer").write_text("not dwarfs")
    proc = run(app, "fim-layer", "list", env={"FIM_LAYERS": str(tmp_path / "home")})
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == embedded(app)
    assert proc.stderr.startswith("W::")
    warning = f"Skipping invalid dwarfs filesystem '{managed}/junk.layer'"
    assert proc.stderr.rstrip().endswith(warning)


def test_list_never_runs_commands(app: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    ok(app, "fim-layer", "list", env={"FIM_LAYERS": f"$(touch {marker})"})
    assert not marker.exists()


def test_add(app: Path, dwarfs: Path) -> None:
    out = ok(app, "fim-layer", "add", str(dwarfs))
    assert out.rstrip().endswith(f"Included novel layer from file '{dwarfs}'")
    lines = ok(app, "fim-layer", "list").splitlines()
    assert len(lines) == 2 and lines[1].endswith(f":{dwarfs.stat().st_size}:{app}")


def test_add_refuses_what_is_not_dwarfs(app: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_text("no")
    fails(app, "fim-layer", "add", str(junk), message="Failed to add layer")
    assert len(ok(app, "fim-layer", "list").splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    ([], "Missing op for 'fim-layer' (create,add,commit,list)"),
    (["bogus"], "Invalid layer operation"),
    (["list", "x", "y"], "Trailing arguments for fim-layer list: ['x','y',]"),
    (["add"], "add requires exactly one argument (/path/to/file.layer)"),
    (["add", "a", "b"], "add requires exactly one argument (/path/to/file.layer)"),
])
def test_errors(app: Path, args: list[str], message: str) -> None:
    fails(app, "fim-layer", *args, message=message)
