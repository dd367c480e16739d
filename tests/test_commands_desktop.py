"""fim-desktop setup/enable/dump through real images: the stored settings and icon, the
printed JSON, entry and MIME texts, remote icons, every error of the spec."""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.images import fails, ok, stored

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
SETUP_FAILED = "Failed to setup desktop integration"




def setup_file(directory: Path, file: str = "desktop.json", **fields: object) -> Path:
    """A setup JSON (fields set to None are left out) and the icon it names by default."""
    doc = {"name": "MyApp", "icon": "./my_app.png", "categories": ["System", "Network"],
           "integrations": ["ENTRY", "MIMETYPE", "ICON"], **fields}
    doc = {k: v for k, v in doc.items() if v is not None}
    path = directory / file
    path.write_text(json.dumps(doc))
    (directory / "my_app.png").write_bytes(PNG)
    return path


SETUP_OUTPUT = """\
{
  "categories": [
    "Network",
    "System"
  ],
  "integrations": [
    "ENTRY",
    "MIMETYPE",
    "ICON"
  ],
  "name": "MyApp"
}
"""


def test_setup_stores_settings_and_icon(app: Path) -> None:
    path = setup_file(app.parent, categories=["System", "Network", "System"],
                      integrations=["icon", "Entry", "MIMETYPE", "entry"], extra="ignored")
    assert ok(app, "fim-desktop", "setup", str(path)) == SETUP_OUTPUT
    cfg = stored(app)
    assert cfg.desktop is not None and cfg.desktop.to_json() == json.loads(SETUP_OUTPUT)
    assert cfg.icon == ("png", PNG)


def test_enable_replaces_the_integrations(app: Path) -> None:
    fails(app, "fim-desktop", "enable", "entry", message="Empty json data", level="E")
    ok(app, "fim-desktop", "setup", str(setup_file(app.parent, integrations=None)))
    assert stored(app).desktop.integrations == []  # type: ignore[union-attr]
    assert ok(app, "fim-desktop", "enable", "icon,ENTRY") == "ENTRY\nICON\n"
    assert stored(app).desktop.integrations == ["ENTRY", "ICON"]  # type: ignore[union-attr]
    assert ok(app, "fim-desktop", "enable", "mimetype,icon,entry") == "ENTRY\nMIMETYPE\nICON\n"
    assert ok(app, "fim-desktop", "enable", "none") == "NONE\n"
    assert stored(app).desktop.integrations == []  # type: ignore[union-attr]
    assert ok(app, "fim-desktop", "enable", "") == ""


def test_dump_entry_mimetype_icon(app: Path, tmp_path: Path) -> None:
    fails(app, "fim-desktop", "dump", "entry", message="Empty json data", level="E")
    fails(app, "fim-desktop", "dump", "mimetype", message="Empty json data", level="E")
    fails(app, "fim-desktop", "dump", "icon", "x", message="Empty icon data", level="E")
    ok(app, "fim-desktop", "setup", str(setup_file(app.parent, name="My App")))
    assert ok(app, "fim-desktop", "dump", "entry") == (
        "[Desktop Entry]\nName=My App\nType=Application\n"
        'Comment=FlatImage distribution of "My App"\n'
        f'Exec="{app}" %F\nIcon=flatimage_My App\nMimeType=application/flatimage_My_App;\n'
        "Categories=Network;System;\n")
    assert ok(app, "fim-desktop", "DUMP", "MimeType") == (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">\n'
        '  <mime-type type="application/flatimage_My_App">\n'
        "    <comment>FlatImage Application</comment>\n"
        '    <glob weight="100" pattern="app.flatimage"/>\n'
        '    <sub-class-of type="application/x-executable"/>\n'
        '    <generic-icon name="application-flatimage"/>\n'
        "  </mime-type>\n"
        "</mime-info>\n")
    assert ok(app, "fim-desktop", "dump", "icon", str(tmp_path / "out")) == ""
    assert (tmp_path / "out.png").read_bytes() == PNG
    ok(app, "fim-desktop", "dump", "icon", str(tmp_path / "given.png"))
    assert (tmp_path / "given.png").read_bytes() == PNG


@pytest.mark.parametrize(("name", "kind", "dumped"), [
    ("icon.svg", "svg", "out.svg"), ("icon.jpg", "jpg", "out.jpg"),
    ("icon.jpeg", "jpg", "out.jpg")])
def test_icon_types(app: Path, tmp_path: Path, name: str, kind: str, dumped: str) -> None:
    (app.parent / name).write_bytes(b"<svg/>" if kind == "svg" else b"\xff\xd8jpeg")
    ok(app, "fim-desktop", "setup", str(setup_file(app.parent, icon=name)))
    assert stored(app).icon[0] == kind  # type: ignore[index]
    ok(app, "fim-desktop", "dump", "icon", str(tmp_path / "out"))
    assert (tmp_path / dumped).read_bytes() == stored(app).icon[1]  # type: ignore[index]


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_remote_icon(app: Path, http_dir: tuple[Path, str]) -> None:
    served, url = http_dir
    (served / "logo.png").write_bytes(PNG)
    assert ok(app, "fim-desktop", "setup",
              str(setup_file(app.parent, icon=f"{url}/logo.png"))) == SETUP_OUTPUT
    assert stored(app).icon == ("png", PNG)
    proc = fails(app, "fim-desktop", "setup",
                 str(setup_file(app.parent, icon=f"{url}/missing.png")),
                 message=f"Could not download icon from '{url}/missing.png'", level="E")
    assert "Failed to resolve icon path or URL" in proc.stderr and SETUP_FAILED in proc.stderr
    (served / "big.svg").write_bytes(b"x" * (1 << 20))
    fails(app, "fim-desktop", "setup", str(setup_file(app.parent, icon=f"{url}/big.svg")),
          message="File is too large", level="E")
    fails(app, "fim-desktop", "setup", str(setup_file(app.parent, icon="https://nodot")),
          message="Could not get icon file extension from url", level="E")
    assert stored(app).icon == ("png", PNG)


def test_setup_errors(app: Path, tmp_path: Path) -> None:
    d = app.parent
    big = d / "big.png"
    big.write_bytes(b"x" * (1 << 20))
    (d / "broken.json").write_text("{not json")
    cases = [
        (tmp_path / "missing.json",
         f"Failed to open file '{tmp_path / 'missing.json'}' for desktop integration"),
        ({"name": "a/b"}, "Application name cannot contain the '/' character"),
        # control characters would inject keys (Exec=) into the .desktop file (issue 20)
        ({"name": "a\nExec=sh"},
         'Application name "a\\nExec=sh" cannot contain control characters'),
        ({"name": "a\tb"}, 'Application name "a\\tb" cannot contain control characters'),
        ({"name": "a\u001b"},
         'Application name "a\\u001b" cannot contain control characters'),
        ({"categories": ["System", "Network\r\nExec=sh"]},
         'Desktop category "Network\\r\\nExec=sh" cannot contain control characters'),
        ({"categories": ["Network;Exec=sh"]},
         "Desktop category \"Network;Exec=sh\" must be one name (not empty, no ';')"),
        ({"categories": [""]}, "Desktop category \"\" must be one name (not empty, no ';')"),
        ({"icon": None}, "Could not retrieve icon path field from json"),
        ({"icon": "./nothere.png"}, "Could not get size of file './nothere.png'"),
        ({"icon": "./my_app.gif"}, "Icon extension '.gif' is not supported"),
        ({"icon": "./my_app.PNG"}, "Icon extension '.PNG' is not supported"),
        ({"icon": str(big)}, f"File is too large, '{1 << 20}' bytes"),
        ({"icon": 7}, "Failed to deserialize json"),
        ({"name": None}, "Failed to deserialize json"),
        ({"categories": "Game"}, "Failed to deserialize json"),
        ({"integrations": ["ENTRY", "DOCK"]}, "Failed to deserialize json"),
        (d / "broken.json", "Failed to deserialize json"),
    ]
    before = app.read_bytes()
    for i, (fields, message) in enumerate(cases):
        path = fields if isinstance(fields, Path) else setup_file(d, f"{i}.json", **fields)
        proc = fails(app, "fim-desktop", "setup", str(path), message=message, level="E")
        assert SETUP_FAILED in proc.stderr and proc.stdout == ""
        assert len(proc.stderr.splitlines()) == 3, proc.stderr  # the message on one line
    assert app.read_bytes() == before


def test_hostile_stored_settings_are_refused(app: Path) -> None:
    """An author wrote the desktop settings into the reserved space directly, bypassing
    setup: dump and clean refuse them (runs write nothing: test_desktop_integration)."""
    from fim.app import config, image
    from fim.app.config import Desktop

    with config.edit(image.read_layout(str(app))) as cfg:
        cfg.desktop = Desktop("Evil", ["Network\nExec=/bin/sh"], ["ENTRY"])
    message = 'Desktop category "Network\\nExec=/bin/sh" cannot contain control characters'
    for args in (["dump", "entry"], ["dump", "mimetype"], ["clean"]):
        proc = fails(app, "fim-desktop", *args, message=message, level="E")
        assert proc.stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    ([], "Missing op for 'fim-desktop' (enable,setup,clean,dump)"),
    (["bogus"], "Invalid desktop operation"),
    (["setup"], "Missing argument for 'setup' (/path/to/file.json)"),
    (["setup", "a", "b"], "Trailing arguments for fim-desktop: ['b',]"),
    (["enable"], "Missing arguments for 'enable' (entry,mimetype,icon,none)"),
    (["enable", "entry,dock"], "Invalid integration item"),
    (["enable", "entry,"], "Invalid integration item"),
    (["enable", "none,icon"], "'none' option should not be used with others"),
    (["enable", "icon", "x"], "Trailing arguments for fim-desktop: ['x',]"),
    (["dump"], "Missing arguments for 'dump' (entry,mimetype,icon)"),
    (["dump", "desktop"], "Invalid dump operation"),
    (["dump", "none"], "Invalid desktop dump operation"),
    (["dump", "icon"], "Missing argument for 'icon' /path/to/dump/file"),
    (["dump", "icon", "a", "b"], "Trailing arguments for fim-desktop: ['b',]"),
    (["dump", "entry", "x"], "Trailing arguments for fim-desktop: ['x',]"),
])
def test_parse_errors(app: Path, args: list[str], message: str) -> None:
    fails(app, "fim-desktop", *args, message=message, level="C")


def test_clean(app: Path) -> None:
    fails(app, "fim-desktop", "clean", message="Empty json data", level="E")
    ok(app, "fim-desktop", "setup", str(setup_file(app.parent, integrations=["ENTRY"])))
    fails(app, "fim-desktop", "clean", "x", message="Trailing arguments for fim-desktop: ['x',]",
          level="C")
    xdg = app.parent / "xdg"
    entry = xdg / "applications" / "flatimage-MyApp.desktop"
    entry.parent.mkdir(parents=True)
    entry.write_text("x")
    out = ok(app, "fim-desktop", "clean", env={"XDG_DATA_HOME": str(xdg)})
    assert out.endswith(f"::Removed file '{entry}'\n") and not entry.exists()
    assert stored(app).desktop is not None  # the settings are kept
