"""The other config commands through real images (fim-overlay, fim-casefold, fim-notify,
fim-remote, fim-version, fim-help), dispatch, log levels, FIM_* variables, the data
directory, and persistence across runs, cp and mv."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from fim.app import image
from tests.images import (
    fails,
    ok,
    run,
    stored,
    with_reserved_size,
)

SPEC = Path(__file__).resolve().parents[2] / "shared" / "docs" / "flatimage-cli.md"
FALLBACK = "casefold cannot be used with bwrap overlayfs, falling back to unionfs"




# -- fim-overlay, fim-casefold, fim-notify ----------------------------------------------------

def test_overlay_set_show_and_fim_overlay(app: Path) -> None:
    assert ok(app, "fim-overlay", "show") == "FIMFS\n"
    for word, shown in [("unionfs", "UNIONFS"), ("OverlayFS", "OVERLAYFS"), ("bwrap", "BWRAP"),
                        ("fimfs", "FIMFS"), ("UNIONFS", "UNIONFS")]:
        assert ok(app, "fim-overlay", "set", word) == ""
        assert ok(app, "fim-overlay", "SHOW") == shown + "\n"
    assert stored(app).overlay == "unionfs"
    assert ok(app, "fim-overlay", "show", env={"FIM_OVERLAY": "overlayfs"}) == "OVERLAYFS\n"
    assert ok(app, "fim-overlay", "show", env={"FIM_OVERLAY": "fimfs"}) == "FIMFS\n"
    for ignored in ("OVERLAYFS", "", "bogus"):
        assert ok(app, "fim-overlay", "show", env={"FIM_OVERLAY": ignored}) == "UNIONFS\n"


def test_casefold_with_bwrap_falls_back_to_unionfs(app: Path) -> None:
    ok(app, "fim-overlay", "set", "bwrap")
    assert ok(app, "fim-casefold", "ON") == ""
    assert stored(app).casefold is True
    proc = run(app, "fim-overlay", "show")
    assert (proc.returncode, proc.stdout) == (0, "UNIONFS\n")
    assert re.fullmatch(rf"W::\w+\.py::\d+::{FALLBACK}\n", proc.stderr)  # origin: any module
    proc = run(app, "fim-casefold", "off")  # the config loaded before the command has it on
    assert proc.returncode == 0 and FALLBACK in proc.stderr
    assert stored(app).casefold is False
    assert ok(app, "fim-overlay", "show") == "BWRAP\n"
    proc = run(app, "fim-overlay", "show", env={"FIM_CASEFOLD": "1"})
    assert proc.stdout == "UNIONFS\n" and FALLBACK in proc.stderr
    assert ok(app, "fim-overlay", "show", env={"FIM_CASEFOLD": "0"}) == "BWRAP\n"
    ok(app, "fim-overlay", "set", "fimfs")
    ok(app, "fim-casefold", "on")
    assert ok(app, "fim-overlay", "show") == "FIMFS\n"  # fimfs casefolds itself: no warning


def test_casefold_warning_is_quiet_for_the_boot_command(app: Path) -> None:
    ok(app, "fim-overlay", "set", "bwrap")
    ok(app, "fim-casefold", "on")
    assert FALLBACK not in run(app).stderr
    assert FALLBACK in run(app, env={"FIM_DEBUG": "1"}).stderr


def test_notify_on_off(app: Path) -> None:
    ok(app, "fim-notify", "on")
    assert stored(app).notify is True
    ok(app, "fim-notify", "Off")
    assert stored(app).notify is False


SWITCH_ERRORS = [
    ("fim-overlay", [], "Missing op for 'fim-overlay' (<set|show>)"),
    ("fim-overlay", ["bogus"], "Invalid overlay operation"),
    ("fim-overlay", ["none"], "Invalid operation for fim-overlay"),
    ("fim-overlay", ["set"], "Missing argument for 'set'"),
    ("fim-overlay", ["set", "ext4"], "Invalid overlay type"),
    ("fim-overlay", ["set", "unionfs", "x"], "Trailing arguments for fim-overlay: ['x',]"),
    ("fim-overlay", ["show", "x"], "Trailing arguments for fim-overlay: ['x',]"),
    ("fim-casefold", [], "Incorrect number of arguments for 'fim-casefold' (<on|off>)"),
    ("fim-casefold", ["maybe"], "Invalid casefold switch"),
    ("fim-casefold", ["none"], "Invalid casefold switch"),  # upstream: none means off
    ("fim-casefold", ["on", "x"], "Trailing arguments for fim-casefold: ['x',]"),
    ("fim-notify", [], "Incorrect number of arguments for 'fim-notify' (<on|off>)"),
    ("fim-notify", ["on", "x"], "Incorrect number of arguments for 'fim-notify' (<on|off>)"),
    ("fim-notify", ["yes"], "Invalid notify switch"),
    ("fim-notify", ["NONE"], "Invalid notify switch"),
]


@pytest.mark.parametrize(("command", "args", "message"), SWITCH_ERRORS)
def test_switch_errors(app: Path, command: str, args: list[str], message: str) -> None:
    before = app.read_bytes()
    fails(app, command, *args, message=message, level="C")
    assert app.read_bytes() == before


def test_overlay_none_is_a_runtime_error(app: Path) -> None:
    proc = fails(app, "fim-overlay", "set", "none", message="Invalid overlay option", level="E")
    assert re.search(r"^E::[^\n]*::Failed to set overlay type$", proc.stderr, re.M)


# -- fim-remote -------------------------------------------------------------------------------

def test_remote_set_show_clear(app: Path) -> None:
    proc = fails(app, "fim-remote", "show", message="No remote URL configured", level="E")
    assert "Failed to get remote URL" in proc.stderr and proc.stdout == ""
    url = "https://example.com/updates"
    assert re.fullmatch(rf"I::remote\.py::\d+::Set remote URL to '{url}'\n",
                        ok(app, "fim-remote", "set", url))
    assert ok(app, "fim-remote", "show") == url + "\n"
    assert stored(app).remote == url
    assert "::Cleared remote URL" in ok(app, "fim-remote", "clear")
    assert "::Cleared remote URL" in ok(app, "fim-remote", "clear")
    fails(app, "fim-remote", "show", message="No remote URL configured")


@pytest.mark.parametrize(("args", "message"), [
    ([], "Missing op for 'fim-remote' (<set|show|clear>)"),
    (["bogus"], "Invalid remote operation"),
    (["set"], "Missing URL for 'set' operation"),
    (["set", "a", "b"], "Trailing arguments for fim-remote: ['b',]"),
    (["show", "x"], "Trailing arguments for fim-remote: ['x',]"),
    (["clear", "x"], "Trailing arguments for fim-remote: ['x',]"),
])
def test_remote_errors(app: Path, args: list[str], message: str) -> None:
    fails(app, "fim-remote", *args, message=message, level="C")


def test_remote_too_large(tmp_path: Path, template: Path) -> None:
    small = with_reserved_size(template, tmp_path / "app.flatimage", 8192)
    before = small.read_bytes()
    fails(small, "fim-remote", "set", "https://x/" + "y" * 5000,
          message="Not enough space to fit remote URL", level="E")
    assert small.read_bytes() == before


# -- fim-version, fim-help ------------------------------------------------------------------

def test_version(app: Path) -> None:
    short = ok(app, "fim-version", "short")
    assert re.fullmatch(r"v\d+\.\d+\.\d+\n", short)
    full = json.loads(ok(app, "fim-version", "FULL"))
    assert list(full) == ["COMMIT", "DISTRIBUTION", "TIMESTAMP", "VERSION"]
    assert full["VERSION"] + "\n" == short and full["DISTRIBUTION"] == "ROOTFS"
    assert re.fullmatch(r"\d{14}", full["TIMESTAMP"])
    assert full["TIMESTAMP"][:8] == time.strftime("%Y%m%d", time.gmtime())
    assert ok(app, "fim-version", "full").startswith('{\n  "COMMIT": ')
    assert ok(app, "fim-version", "deps") == "{}\n"


@pytest.mark.parametrize(("args", "message"), [
    ([], "Missing op for 'fim-version' (<short|full|deps>)"),
    (["long"], "Invalid version operation"),
    (["none"], "Invalid operation for fim-version"),
    (["short", "x"], "Trailing arguments for fim-version: ['x',]"),
])
def test_version_errors(app: Path, args: list[str], message: str) -> None:
    fails(app, "fim-version", *args, message=message, level="C")


def _spec_help_texts() -> dict[str, str]:
    text = SPEC.read_text()
    section = text[text.index("## 17. Exact help texts"):text.index("## 18.")]
    blocks = re.findall(r"`fim-help( [a-z]+)?[^`]*`:\n\n```\n(.*?)```", section, re.S)
    return {(topic or "").strip(): body for topic, body in blocks}


@pytest.mark.skipif(not SPEC.exists(), reason="the spec is not beside the repository")
def test_help_texts_are_the_spec_ones(app: Path) -> None:
    texts = _spec_help_texts()
    assert len(texts) == 17
    for topic, want in texts.items():
        args = [topic, "ignored", "words"] if topic else []
        got = ok(app, "fim-help", *args)
        if not topic:  # one more command, fim's own
            want = want.replace("unshare,version}", "unshare,update,version}")
        if topic == "overlay":  # one more backend, listed
            want = want.replace("<overlayfs|unionfs|bwrap>", "<fimfs|overlayfs|unionfs|bwrap>")
            want = want.replace(
                "to use\n", "to use\n  <fimfs> : Uses fim's in-process filesystem stack "
                "(the default)\n")
        assert got == want, topic
    assert ok(app, "fim-help", "NOTIFY") == ok(app, "fim-help", "notify")


@pytest.mark.parametrize("topic", ["fim-bind", "bogus", "none"])
def test_help_unknown_topic(app: Path, topic: str) -> None:
    fails(app, "fim-help", topic, message=f"Invalid argument for help command: {topic}",
          level="C")


# -- dispatch, levels, errors ---------------------------------------------------------------

@pytest.mark.parametrize("command", ["fim-foo", "fim-Exec", "fim-", "fim-commit", "fim-icon"])
def test_unknown_fim_command(app: Path, command: str) -> None:
    proc = fails(app, command, "x", message=f"Unknown command: {command}", level="C")
    assert [line.split("::")[-1] for line in proc.stderr.splitlines()] == [
        f"Unknown command: {command}", "Invalid fim command", "Could not parse arguments",
        "The program exited with an error"]
    assert not (app.parent / ".app.flatimage.data").exists()  # nothing created


def test_tracebacks_only_with_fim_debug(app: Path) -> None:
    plain = run(app, "fim-perms", "add", "hello")
    assert "Traceback" not in plain.stderr
    debug = run(app, "fim-perms", "add", "hello", env={"FIM_DEBUG": "1"})
    assert debug.returncode == 125 and "Traceback" in debug.stderr
    assert "C::namesets.py::" in debug.stderr
    assert "Traceback" not in run(app, "fim-perms", "add", "hello",
                                  env={"FIM_DEBUG": "yes"}).stderr


def test_main_offset(app: Path) -> None:
    layout = image.read_layout(str(app))
    for value in ("1", ""):
        proc = run(app, "fim-bogus", env={"FIM_MAIN_OFFSET": value})
        assert (proc.returncode, proc.stdout, proc.stderr) == (
            0, f"{layout.reserved_offset}\n", "")
    assert not (app.parent / ".app.flatimage.data").exists()


# -- FIM_* variables and directories -------------------------------------------------------

def test_fim_variables(app: Path) -> None:
    names = ["FIM_VERSION", "FIM_COMMIT", "FIM_TIMESTAMP", "FIM_DIST", "FIM_BIN_SELF",
             "FIM_OFFSET", "FIM_DIR_SELF", "FIM_DIR_GLOBAL", "FIM_DIR_APP", "FIM_DIR_APP_BIN",
             "FIM_DIR_APP_SBIN", "FIM_DIR_INSTANCE", "FIM_PID", "FIM_DIR_RUNTIME",
             "FIM_DIR_RUNTIME_HOST", "FIM_DIR_DATA", "FIM_DIR_LAYERS"]
    ok(app, "fim-env", "add", *(f"{n}=${n}" for n in names))
    got = dict(line.split("=", 1) for line in ok(app, "fim-env", "list").splitlines())
    layout = image.read_layout(str(app))
    app_dir = f"/tmp/fim-{os.getuid()}/app/{layout.build_id}"  # private to the user
    data = str(app.parent / ".app.flatimage.data")
    assert got["FIM_VERSION"] == ok(app, "fim-version", "short").strip()
    assert got["FIM_DIST"] == "ROOTFS" and got["FIM_OFFSET"] == str(layout.reserved_offset)
    assert got["FIM_BIN_SELF"] == str(app) and got["FIM_DIR_SELF"] == str(app.parent)
    assert got["FIM_DIR_GLOBAL"] == "/tmp/fim" and got["FIM_DIR_APP"] == app_dir
    assert got["FIM_DIR_APP_BIN"] == f"{app_dir}/bin"
    assert got["FIM_DIR_APP_SBIN"] == f"{app_dir}/sbin"
    assert got["FIM_PID"].isdigit()
    assert got["FIM_DIR_INSTANCE"] == f"{app_dir}/instance/{got['FIM_PID']}"
    assert got["FIM_DIR_RUNTIME"] == "/tmp/fim/run"
    assert got["FIM_DIR_RUNTIME_HOST"] == "/tmp/fim/run/host"
    assert got["FIM_DIR_DATA"] == data and got["FIM_DIR_LAYERS"] == f"{data}/layers"
    full = json.loads(ok(app, "fim-version", "full"))
    assert (got["FIM_COMMIT"], got["FIM_TIMESTAMP"]) == (full["COMMIT"], full["TIMESTAMP"])


def test_data_directory_beside_the_image(app: Path, tmp_path: Path) -> None:
    ok(app, "fim-version", "short")
    data = app.parent / ".app.flatimage.data"
    assert sorted(p.name for p in data.iterdir()) == [
        "casefold", "layers", "root", "tmp", "work"]
    custom = tmp_path / "elsewhere"
    ok(app, "fim-env", "add", "D=$FIM_DIR_DATA")
    assert run(app, "fim-env", "list", env={"FIM_DIR_DATA": str(custom)}).stdout == (
        f"D={custom}\n")
    assert (custom / "root").is_dir() and (custom / "layers").is_dir()


def test_invoked_through_a_symlink_and_from_elsewhere(app: Path, tmp_path: Path) -> None:
    ok(app, "fim-env", "add", "SELF=$FIM_BIN_SELF")
    (tmp_path / "bin").mkdir()
    link = tmp_path / "bin" / "tool"
    link.symlink_to(app)
    proc = subprocess.run(["tool", "fim-env", "list"], capture_output=True, text=True,
                          cwd="/", env={"PATH": f"{link.parent}:/usr/bin:/bin",
                                        "HOME": str(tmp_path)})
    assert (proc.returncode, proc.stdout) == (0, f"SELF={app}\n")
    assert not (tmp_path / "bin" / ".tool.data").exists()


# -- persistence -----------------------------------------------------------------------------

def _configure(app: Path) -> None:
    ok(app, "fim-perms", "add", "home,network")
    ok(app, "fim-unshare", "add", "ipc")
    ok(app, "fim-env", "add", "A=1")
    ok(app, "fim-boot", "set", "echo", "hi")
    ok(app, "fim-bind", "add", "rw", "/src", "/dst")
    ok(app, "fim-overlay", "set", "unionfs")
    ok(app, "fim-casefold", "on")
    ok(app, "fim-notify", "on")
    ok(app, "fim-remote", "set", "https://r")


def _listing(app: Path) -> list[str]:
    return [ok(app, *c) for c in (["fim-perms", "list"], ["fim-unshare", "list"],
                                  ["fim-env", "list"], ["fim-boot", "show"],
                                  ["fim-bind", "list"], ["fim-overlay", "show"],
                                  ["fim-remote", "show"])]


def test_config_survives_runs_cp_and_mv(app: Path, tmp_path: Path) -> None:
    _configure(app)
    listing = _listing(app)
    assert listing == _listing(app)
    copy = tmp_path / "other" / "copy.flatimage"
    copy.parent.mkdir()
    shutil.copy(app, copy)
    (copy.parent / "home").mkdir()
    assert _listing(copy) == listing
    original = app.read_bytes()
    ok(copy, "fim-perms", "clear")
    ok(copy, "fim-env", "add", "B=2")
    ok(copy, "fim-casefold", "off")
    assert app.read_bytes() == original
    assert _listing(app) == listing
    assert ok(copy, "fim-perms", "list") == "" and ok(copy, "fim-env", "list") == "A=1\nB=2\n"
    moved = tmp_path / "moved.flatimage"
    app.rename(moved)
    assert _listing(moved) == listing
    assert stored(moved).casefold and stored(moved).notify and not stored(copy).casefold


def test_an_image_the_user_cannot_write(app: Path) -> None:
    if os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"):
        pytest.skip("needs root to switch to another user, and /usr/bin/python3")
    ok(app, "fim-perms", "add", "home")  # extracts the payload, owned by root
    shared = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        os.chmod(shared, 0o777)
        img = shared / "app.flatimage"
        shutil.copy(app, img)
        os.chmod(img, 0o755)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(img),
             "fim-perms", "add", "network"], capture_output=True, text=True, cwd=shared,
            env={"PATH": "/usr/bin:/bin", "HOME": str(shared)})
        assert proc.returncode == 125 and "Failed to open input file" in proc.stderr
        listed = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(img),
             "fim-perms", "list"], capture_output=True, text=True, cwd=shared,
            env={"PATH": "/usr/bin:/bin", "HOME": str(shared)})
        assert (listed.returncode, listed.stdout) == (0, "home\n")
    finally:
        shutil.rmtree(shared)
