"""The layers a run mounts, as its ``FIM_DEBUG=1`` lines name them, against `fim-layer
list` (spec 2.10, 10.1, 16; upstream's layer/list.py compares the offsets of the
``Mounting layer`` lines with the list, layer/commit.py and create.py count the
``Overlay layer`` lines). Every backend, as root and as an unprivileged user."""

from __future__ import annotations

import os
import re

import pytest

from tests.containers import Runner

pytestmark = pytest.mark.fuse

BACKENDS = ["fimfs", "overlayfs", "unionfs", "bwrap"]
MOUNTING = re.compile(r"^D::[^\n]*::Mounting layer from '(.*)' with offset '(\d+)'$")
OVERLAY = re.compile(r"^I::[^\n]*::Overlay layer '(.*)'$")


def listed(runner: Runner, env: dict[str, str] | None = None) -> list[tuple[str, int, int]]:
    """`fim-layer list` as (path, offset, size), checking the indices."""
    out = runner.ok("fim-layer", "list", env=env)
    rows = [line.split(":", 3) for line in out.splitlines()]
    assert [int(row[0]) for row in rows] == list(range(len(rows))), out
    return [(path, int(offset), int(size)) for _, offset, size, path in rows]


def debug_run(runner: Runner, backend: str,
              env: dict[str, str] | None = None) -> tuple[list[tuple[str, int]], list[str]]:
    """The ``Mounting layer`` (file name, offset) and ``Overlay layer`` lines of a run."""
    out = runner.ok("fim-exec", "echo", "ran",
                    env={**(env or {}), "FIM_DEBUG": "1", "FIM_OVERLAY": backend})
    lines = out.splitlines()
    assert lines[-1] == "ran"
    assert all(line == "" or line[:3] in ("D::", "I::") for line in lines[:-1]), out
    mounted = [(m[1], int(m[2])) for m in map(MOUNTING.match, lines) if m]
    overlay = [m[1] for m in map(OVERLAY.match, lines) if m]
    return mounted, overlay


def agree(runner: Runner, backend: str, env: dict[str, str] | None = None) -> int:
    """Each listed layer is mounted once, in the listed order, and is one lower layer of
    the overlay; the number of layers."""
    layers = listed(runner, env)
    mounted, overlay = debug_run(runner, backend, env)
    assert mounted == [(os.path.basename(path), offset) for path, offset, _ in layers]
    assert len(overlay) == len(set(overlay)) == len(layers), overlay
    if backend == "fimfs":  # no mount per layer: the file and offset of each
        assert overlay == [f"{path}' with offset '{offset}" for path, offset, _ in layers]
    else:
        assert all(re.search(r"/instance/\d+/layers/\d+$", lower) for lower in overlay), overlay
    return len(layers)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fresh_image_mounts_what_it_lists(runner: Runner, backend: str) -> None:
    [(path, offset, size)] = listed(runner)
    assert path == str(runner.app) and offset > 0 and size > 0
    assert agree(runner, backend) == 1


def test_embedded_fim_layers_and_managed_layers(runner: Runner) -> None:
    """upstream's test_list_mixed_layers: a committed embedded layer, a managed one and
    a FIM_LAYERS file, listed and mounted in discovery order (spec 10.1)."""
    external = runner.workspace / "external.layer"
    for n, commit in enumerate((["binary"], ["layer"], ["file", str(external)])):
        runner.ok("fim-root", "sh", "-c", f"echo {n} > /which")
        runner.ok("fim-layer", "commit", *commit)
    env = {"FIM_LAYERS": str(external)}
    layers = listed(runner, env)
    managed = runner.data / "layers" / "layer-000.layer"
    assert [(p, o == 0) for p, o, _ in layers] == [
        (str(runner.app), False), (str(runner.app), False), (str(external), True),
        (str(managed), True)]
    assert [s for p, _, s in layers[2:]] == [external.stat().st_size, managed.stat().st_size]
    for backend in BACKENDS:
        assert agree(runner, backend, env) == 4
        # the managed layer comes last: its /which wins over FIM_LAYERS'
        out = runner.ok("fim-exec", "cat", "/which", env={**env, "FIM_OVERLAY": backend})
        assert out == "1\n", backend
