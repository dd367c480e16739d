"""fim-perms and fim-unshare through real images: round trips, keyword and comma rules,
every error of the spec (exit 125, nothing changed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fim.app import config
from tests.images import fails, ok, stored


def lines(*names: str) -> str:
    return "".join(f"{n}\n" for n in names)


def test_perms_round_trip(app: Path) -> None:
    assert ok(app, "fim-perms", "add", "home,xorg,wayland,network") == ""
    assert ok(app, "fim-perms", "list") == lines("home", "network", "wayland", "xorg")
    assert ok(app, "fim-perms", "del", "xorg,WAYLAND") == ""
    assert ok(app, "fim-perms", "list") == lines("home", "network")
    assert stored(app).permissions == {"home", "network"}
    ok(app, "fim-perms", "SET", "Gpu,")  # keywords in any case; one trailing comma dropped
    assert ok(app, "fim-perms", "LIST") == lines("gpu")
    ok(app, "fim-perms", "add", "gpu,gpu,usb")
    assert ok(app, "fim-perms", "list") == lines("gpu", "usb")
    ok(app, "fim-perms", "del", "home")  # absent: not an error
    ok(app, "fim-perms", "set", "all")
    assert ok(app, "fim-perms", "list") == lines(*sorted(config.PERMISSIONS))
    assert ok(app, "fim-perms", "list") == lines(
        "audio", "dbus_system", "dbus_user", "dev", "gpu", "home", "input", "media", "network",
        "optical", "shm", "udev", "usb", "wayland", "xorg")
    ok(app, "fim-perms", "del", "all")  # fixed upstream bug: removes everything
    assert ok(app, "fim-perms", "list") == ""
    ok(app, "fim-perms", "add", "all")
    ok(app, "fim-perms", "clear")
    assert ok(app, "fim-perms", "list") == ""
    ok(app, "fim-perms", "add", "home")
    ok(app, "fim-perms", "add", "")
    ok(app, "fim-perms", "del", "")
    assert ok(app, "fim-perms", "list") == lines("home")
    ok(app, "fim-perms", "set", "")
    assert stored(app).permissions == set()


def test_unshare_round_trip(app: Path) -> None:
    ok(app, "fim-unshare", "add", "uts,ipc,pid")
    assert ok(app, "fim-unshare", "list") == lines("ipc", "pid", "uts")
    ok(app, "fim-unshare", "add", "ipc,NET")
    ok(app, "fim-unshare", "del", "pid,cgroup")
    assert ok(app, "fim-unshare", "list") == lines("ipc", "net", "uts")
    ok(app, "fim-unshare", "set", "user")
    assert stored(app).unshare == {"user"}
    ok(app, "fim-unshare", "add", "all")
    assert ok(app, "fim-unshare", "list") == lines("cgroup", "ipc", "net", "pid", "user", "uts")
    ok(app, "fim-unshare", "del", "all")
    assert ok(app, "fim-unshare", "list") == ""
    ok(app, "fim-unshare", "set", "all")
    ok(app, "fim-unshare", "clear")
    ok(app, "fim-unshare", "clear")
    assert stored(app).unshare == set()


PERMS_ERRORS = [
    ([], "C", "Missing op for fim-perms (add,del,list,set,clear)"),
    (["bogus"], "C", "Invalid perms operation"),
    (["none"], "C", "Invalid operation for permissions"),
    (["NONE"], "C", "Invalid operation for permissions"),
    (["add"], "C", "No arguments for 'ADD' command"),
    (["Del"], "C", "No arguments for 'DEL' command"),
    (["set"], "C", "No arguments for 'SET' command"),
    (["add", "hello"], "C", "Invalid permission"),
    (["add", "hello"], "C", "Failed to process permissions"),
    (["set", "home,hello"], "C", "Invalid permission"),
    (["add", "home,,xorg"], "C", "Invalid permission"),
    (["add", "home,"], None, None),
    (["add", "home,,"], "C", "Invalid permission"),
    (["del", "none"], "C", "Invalid permission 'NONE'"),
    (["add", "all,home"], "E", "Permission 'all' should not be used with others"),
    (["set", "home,ALL"], "E", "Permission 'all' should not be used with others"),
    (["add", "home", "xorg"], "C", "Trailing arguments for fim-perms: ['xorg',]"),
    (["list", "x"], "C", "Trailing arguments for fim-perms: ['x',]"),
    (["clear", "x", "y"], "C", "Trailing arguments for fim-perms: ['x','y',]"),
]
UNSHARE_ERRORS = [
    ([], "C", "Missing op for fim-unshare (add,clear,del,list,set)"),
    (["bogus"], "C", "Invalid unshare operation"),
    (["none"], "C", "Invalid operation for unshare"),
    (["add"], "C", "No arguments for 'ADD' command"),
    (["del"], "C", "No arguments for 'DEL' command"),
    (["SET"], "C", "No arguments for 'SET' command"),
    (["add", "ipc,bogus"], "C", "Invalid unshare option"),
    (["add", "bogus"], "C", "Failed to process unshare options"),
    (["add", "none"], "C", "Invalid unshare option 'NONE'"),
    (["set", "ipc,all"], "E", "Unshare option 'all' should not be used with others"),
    (["add", "ipc", "pid"], "C", "Trailing arguments for fim-unshare: ['pid',]"),
    (["list", "a"], "C", "Trailing arguments for fim-unshare: ['a',]"),
]


@pytest.mark.parametrize(("command", "args", "level", "message"),
                         [("fim-perms", *case) for case in PERMS_ERRORS]
                         + [("fim-unshare", *case) for case in UNSHARE_ERRORS])
def test_errors_change_nothing(app: Path, command: str, args: list[str], level: str | None,
                               message: str | None) -> None:
    ok(app, command, "set", "ipc" if command == "fim-unshare" else "gpu")
    before = app.read_bytes()
    if message is None:
        ok(app, command, *args)
        return
    proc = fails(app, command, *args, message=message, level=level)
    assert proc.stdout == ""
    assert app.read_bytes() == before
