"""fim.app.session: start-up builds one Context and leaves this process's environment
alone; the FIM_* variables of spec 7.2 are computed from the Context (issue 23)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fim.app import image, session

BUILD: dict[str, object] = {"version": "1.2.3", "commit": "abc", "timestamp": "20260101"}


def start(tmp_path: Path) -> session.Context:
    layout = image.create(str(tmp_path / "app.flatimage"), "exit 0\n", b"payload",
                          dist="ROOTFS", reserved_size=8192)
    path, layout, build = session.locate(layout.path, BUILD)
    host = session.Host(str(tmp_path / "runtime"), BUILD, "")
    return session.prepare("fim-exec", path, layout, build, host)


def test_start_up_writes_nothing_into_the_environment(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("FIM_")]:
        monkeypatch.delenv(name)
    before = dict(os.environ)
    ctx = start(tmp_path)
    assert dict(os.environ) == before
    data = str(tmp_path / ".app.flatimage.data")
    app = str(tmp_path / "runtime")
    assert ctx.variables() == {
        "FIM_VERSION": "1.2.3", "FIM_COMMIT": "abc", "FIM_TIMESTAMP": "20260101",
        "FIM_DIST": "ROOTFS", "FIM_BIN_SELF": str(tmp_path / "app.flatimage"),
        "FIM_OFFSET": str(ctx.layout.reserved_offset), "FIM_DIR_SELF": str(tmp_path),
        "FIM_DIR_GLOBAL": "/tmp/fim", "FIM_DIR_APP": app, "FIM_DIR_APP_BIN": f"{app}/bin",
        "FIM_DIR_APP_SBIN": f"{app}/sbin", "FIM_DIR_INSTANCE": f"{app}/instance/{os.getpid()}",
        "FIM_PID": str(os.getpid()), "FIM_DIR_RUNTIME": "/tmp/fim/run",
        "FIM_DIR_RUNTIME_HOST": "/tmp/fim/run/host", "FIM_DIR_DATA": data,
        "FIM_DIR_LAYERS": f"{data}/layers",
    }
    assert (ctx.paths.data, ctx.paths.upper, ctx.paths.work) == (
        data, f"{data}/root", f"{data}/work/{os.getpid()}")
    assert os.path.isdir(data)


def test_the_child_environment_is_the_callers_with_the_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    given = str(tmp_path / "elsewhere")
    monkeypatch.setenv("FIM_DIR_DATA", given)  # the user's choice of data directory
    monkeypatch.setenv("FIM_PID", "1")  # the caller's own: the session's wins in a child
    monkeypatch.setenv("MINE", "x")
    ctx = start(tmp_path)
    assert ctx.paths.data == given and ctx.paths.layers == f"{given}/layers"
    assert os.environ["FIM_PID"] == "1"
    child = ctx.environ()
    assert (child["MINE"], child["FIM_DIR_DATA"], child["FIM_PID"]) == (
        "x", given, str(os.getpid()))
