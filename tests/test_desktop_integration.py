"""Desktop integration (spec 13, 15) in-process: the files written into a temporary
XDG_DATA_HOME, byte for byte; icons resized with Pillow; update-mime-database and
desktop-file-validate really run; clean; the glob of names with metacharacters.
End-to-end runs of images are in tests/test_desktop_run.py."""

from __future__ import annotations

import ctypes
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from fim.app import desktop, log
from fim.app.config import Config, Desktop

ENTRY = """\
[Desktop Entry]
Name=MyApp
Type=Application
Comment=FlatImage distribution of "MyApp"
Exec="{image}" %F
Icon=flatimage_MyApp
MimeType=application/flatimage_MyApp;
Categories=Network;System;"""

APP_MIME = """\
<?xml version="1.0" encoding="UTF-8"?>
<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">
  <mime-type type="application/flatimage_MyApp">
    <comment>FlatImage Application</comment>
    <glob weight="100" pattern="{file}"/>
    <sub-class-of type="application/x-executable"/>
    <generic-icon name="application-flatimage"/>
  </mime-type>
</mime-info>"""

GENERIC_MIME = """\
<?xml version="1.0" encoding="UTF-8"?>
<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">
  <mime-type type="application/flatimage">
    <comment>FlatImage Application</comment>
    <magic>
      <match value="ELF" type="string" offset="1">
        <match value="0x46" type="byte" offset="8">
          <match value="0x49" type="byte" offset="9">
            <match value="0x01" type="byte" offset="10"/>
          </match>
        </match>
      </match>
    </magic>
    <glob weight="50" pattern="*.flatimage"/>
    <sub-class-of type="application/x-executable"/>
    <generic-icon name="application-flatimage"/>
  </mime-type>
</mime-info>
"""
SIZES = (16, 22, 24, 32, 48, 64, 96, 128, 256)
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>'


def png(width: int, height: int, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB" if fmt == "JPEG" else "RGBA", (width, height), (200, 10, 10)).save(out, fmt)
    return out.getvalue()


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(path))
    log.configure(log.LEVELS)
    yield path
    log.configure("IWEC")


def context(image: Path, name: str = "MyApp", integrations: tuple[str, ...] = (
        "ENTRY", "MIMETYPE", "ICON"), icon: tuple[str, bytes] | None = None,
        notify: bool = False, categories: tuple[str, ...] = ("Network", "System"),
        ) -> SimpleNamespace:
    cfg = Config()
    cfg.desktop = Desktop(name, sorted(categories), list(integrations))
    cfg.icon = icon if icon is not None else ("png", png(300, 150))
    cfg.notify = notify
    return SimpleNamespace(config=cfg, image=str(image))


def test_entry_and_mime_byte_for_byte(tmp_path: Path, xdg: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "app.flatimage"
    desktop.integrate(context(image))  # type: ignore[arg-type]
    assert (xdg / "applications/flatimage-MyApp.desktop").read_text() == ENTRY.format(
        image=image)
    assert (xdg / "mime/packages/flatimage-MyApp.xml").read_text() == APP_MIME.format(
        file="app.flatimage")
    assert (xdg / "mime/packages/flatimage.xml").read_text() == GENERIC_MIME
    out = capsys.readouterr().out
    assert "Integrating mime database" in out and f"Updating mime database '{xdg}'" in out
    # update-mime-database (shared-mime-info) really ran on the directory
    assert (xdg / "mime/application/flatimage_myapp.xml").exists()
    assert "application/flatimage_MyApp:app.flatimage" in (xdg / "mime/globs2").read_text()
    # the next run: the entry is rewritten, the database left alone
    (xdg / "applications/flatimage-MyApp.desktop").write_text("stale")
    desktop.integrate(context(image))  # type: ignore[arg-type]
    assert (xdg / "applications/flatimage-MyApp.desktop").read_text() == ENTRY.format(
        image=image)
    out = capsys.readouterr().out
    assert "Skipping mime database update" in out and "Updating mime database" not in out


def test_a_moved_image_follows(tmp_path: Path, xdg: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    desktop.integrate(context(tmp_path / "app.flatimage"))  # type: ignore[arg-type]
    capsys.readouterr()
    moved = tmp_path / "elsewhere" / "renamed.flatimage"
    desktop.integrate(context(moved))  # type: ignore[arg-type]
    assert f'Exec="{moved}" %F' in (xdg / "applications/flatimage-MyApp.desktop").read_text()
    assert 'pattern="renamed.flatimage"' in (xdg / "mime/packages/flatimage-MyApp.xml"
                                              ).read_text()
    assert "Updating mime database" in capsys.readouterr().out
    # same file name in another directory: entry follows, database untouched
    again = tmp_path / "third" / "renamed.flatimage"
    desktop.integrate(context(again))  # type: ignore[arg-type]
    assert f'Exec="{again}" %F' in (xdg / "applications/flatimage-MyApp.desktop").read_text()
    assert "Skipping mime database update" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate (desktop-file-utils) is not installed")
@pytest.mark.parametrize("name", ["MyApp", "My App (64-bit) ü"])
@pytest.mark.parametrize("image_name", ["app.flatimage", 'we"ird $x `y` \\z 100%.flatimage'])
def test_entry_is_valid(tmp_path: Path, xdg: Path, name: str, image_name: str) -> None:
    image = tmp_path / "dir with space" / image_name
    desktop.integrate(context(image, name=name, integrations=("ENTRY",)))  # type: ignore[arg-type]
    path = xdg / f"applications/flatimage-{name}.desktop"
    proc = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "error" not in proc.stdout + proc.stderr, proc
    if image_name != "app.flatimage":
        assert ('Exec="' + str(image.parent).replace("\\", "\\\\") +
                '/we\\\\"ird \\\\$x \\\\`y\\\\` \\\\\\\\z 100%%.flatimage" %F'
                ) in path.read_text()


#: Stored settings an image's author wrote into the reserved space, bypassing
#: `fim-desktop setup` (issue 20 item 6): each would inject keys into the .desktop file
#: (a newline then ``Exec=...``) or make file names with control characters.
HOSTILE = [
    ("name", "Evil\nExec=/bin/sh -c 'touch /tmp/pwned'"),
    ("name", "Evil\r\nExec=sh"),
    ("name", "Evil\tApp"),
    ("name", "Evil\x1b[31m"),
    ("name", "Evil\x7f"),
    ("name", "Evil\x85"),
    ("name", "Evil\x00"),
    ("name", "../../evil"),
    ("category", "Network\nExec=/bin/sh -c 'touch /tmp/pwned'"),
    ("category", "Network\r[Desktop Action x]"),
    ("category", "Network\tSystem"),
    ("category", "X-\x01"),
    ("category", "Network;Exec=sh"),
    ("category", ""),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE)
def test_hostile_stored_settings_write_nothing(tmp_path: Path, xdg: Path, field: str,
                                               value: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    ctx = (context(tmp_path / "app", name=value) if field == "name"
           else context(tmp_path / "app", categories=("System", value)))
    desktop.integrate(ctx)  # type: ignore[arg-type]
    assert not xdg.exists()
    lines = capsys.readouterr().err.splitlines()
    refused = [line for line in lines if "Refusing to write the desktop integration" in line]
    assert len(refused) == 1 and refused[0].startswith("E::"), lines


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate (desktop-file-utils) is not installed")
def test_backslashes_in_categories_are_escaped(tmp_path: Path, xdg: Path) -> None:
    categories = ("X-Tool\\Thing", "X-\\n", "Network")
    desktop.integrate(context(tmp_path / "app", categories=categories,  # type: ignore[arg-type]
                              integrations=("ENTRY",)))
    path = xdg / "applications/flatimage-MyApp.desktop"
    lines = path.read_text().splitlines()
    assert lines[-1] == "Categories=Network;X-Tool\\\\Thing;X-\\\\n;"
    assert len(lines) == 8
    proc = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "error" not in proc.stdout + proc.stderr, proc


@pytest.mark.skipif(shutil.which("desktop-file-validate") is None,
                    reason="desktop-file-validate (desktop-file-utils) is not installed")
@pytest.mark.parametrize("name", ["A;B", "A\\B", "A=B", "A[x]", "#A", " lead", "A%B", "A$B",
                                  'A"B', "..", "a\u2028b", "ü😀"])
def test_unusual_names_are_valid(tmp_path: Path, xdg: Path, name: str) -> None:
    desktop.integrate(context(tmp_path / "app", name=name,  # type: ignore[arg-type]
                              integrations=("ENTRY",)))
    path = xdg / f"applications/flatimage-{name}.desktop"
    proc = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "error" not in proc.stdout + proc.stderr, proc
    if name.startswith(" "):
        assert "Name=\\slead\n" in path.read_text()


def test_list_values_escape_semicolons() -> None:
    assert desktop._list(["a;b", "c\\d", "e"]) == "a\\;b;c\\\\d;e;"


def test_names_with_spaces(tmp_path: Path, xdg: Path) -> None:
    image = tmp_path / "app.flatimage"
    desktop.integrate(context(image, name="My App"))  # type: ignore[arg-type]
    text = (xdg / "applications/flatimage-My App.desktop").read_text()
    assert "Name=My App\n" in text and "Icon=flatimage_My App\n" in text
    assert "MimeType=application/flatimage_My_App;\n" in text
    assert 'type="application/flatimage_My_App"' in (
        xdg / "mime/packages/flatimage-My App.xml").read_text()
    assert (xdg / "mime/application/flatimage_my_app.xml").exists()
    assert (xdg / "icons/hicolor/64x64/apps/flatimage_My App.png").exists()


def test_slash_in_a_stored_name_writes_nothing(tmp_path: Path, xdg: Path) -> None:
    desktop.integrate(context(tmp_path / "app", name="../../evil"))  # type: ignore[arg-type]
    assert not xdg.exists()


def test_png_icons_in_nine_sizes(tmp_path: Path, xdg: Path) -> None:
    desktop.integrate(context(tmp_path / "app.flatimage",  # type: ignore[arg-type]
                              integrations=("ICON",)))
    hicolor = xdg / "icons/hicolor"
    for size in SIZES:
        app = hicolor / f"{size}x{size}/apps/flatimage_MyApp.png"
        mime = hicolor / f"{size}x{size}/mimetypes/application-flatimage_MyApp.png"
        assert app.read_bytes() == mime.read_bytes()
        with Image.open(app) as img:
            assert img.format == "PNG" and img.size == (size, round(size / 2))
    generic = [hicolor / "scalable/mimetypes/application-flatimage.svg",
               hicolor / "scalable/apps/flatimage.svg"]
    assert generic[0].read_bytes() == generic[1].read_bytes() == desktop.GENERIC_ICON.encode()
    assert not (xdg / "applications").exists() and not (xdg / "mime").exists()


def test_jpg_icon_becomes_png_and_svg_is_copied(tmp_path: Path, xdg: Path) -> None:
    desktop.integrate(context(tmp_path / "a", name="J", integrations=("ICON",),  # type: ignore[arg-type]
                              icon=("jpg", png(40, 80, "JPEG"))))
    with Image.open(xdg / "icons/hicolor/256x256/apps/flatimage_J.png") as img:
        assert img.format == "PNG" and img.size == (128, 256)
    desktop.integrate(context(tmp_path / "a", name="S", integrations=("ICON",),  # type: ignore[arg-type]
                              icon=("svg", SVG)))
    assert (xdg / "icons/hicolor/scalable/apps/flatimage_S.svg").read_bytes() == SVG
    assert (xdg / "icons/hicolor/scalable/mimetypes/application-flatimage_S.svg"
            ).read_bytes() == SVG


def test_existing_icons_are_never_overwritten(tmp_path: Path, xdg: Path) -> None:
    mine = xdg / "icons/hicolor/16x16/mimetypes/application-flatimage_MyApp.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    desktop.integrate(context(tmp_path / "a", integrations=("ICON",)))  # type: ignore[arg-type]
    assert mine.read_bytes() == b"mine"
    app64 = xdg / "icons/hicolor/64x64/apps/flatimage_MyApp.png"
    assert app64.exists()
    # once the 64x64 app icon exists nothing is written again
    (xdg / "icons/hicolor/16x16/apps/flatimage_MyApp.png").unlink()
    desktop.integrate(context(tmp_path / "a", integrations=("ICON",)))  # type: ignore[arg-type]
    assert not (xdg / "icons/hicolor/16x16/apps/flatimage_MyApp.png").exists()


def test_a_bad_icon_is_only_logged(tmp_path: Path, xdg: Path) -> None:
    desktop.integrate(context(tmp_path / "a", icon=("png", b"not a png")))  # type: ignore[arg-type]
    assert (xdg / "applications/flatimage-MyApp.desktop").exists()
    assert not (xdg / "icons/hicolor/64x64/apps").exists()


def test_clean(tmp_path: Path, xdg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = context(tmp_path / "app.flatimage")
    desktop.integrate(ctx)  # type: ignore[arg-type]
    capsys.readouterr()
    desktop.clean(ctx.config)
    out = capsys.readouterr().out
    removed = [line.split("::", 2)[2] for line in out.splitlines() if "Removed file" in line]
    paths = desktop.Paths(str(xdg), "MyApp")
    assert removed == [f"Removed file '{p}'" for p in [
        paths.entry, paths.mime_app, *paths.icons("png")]]
    assert f"Updating mime database '{xdg}'" in out
    assert not (xdg / "mime/application/flatimage_myapp.xml").exists()
    assert (xdg / "mime/packages/flatimage.xml").exists()  # the generic files are kept
    assert (xdg / "icons/hicolor/scalable/apps/flatimage.svg").exists()
    assert not list((xdg / "icons").rglob("*MyApp*"))


def test_clean_reports_what_it_cannot_remove(tmp_path: Path, xdg: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ctx = context(tmp_path / "a", integrations=("ENTRY",))
    desktop.integrate(ctx)  # type: ignore[arg-type]
    entry = xdg / "applications/flatimage-MyApp.desktop"
    entry.unlink()
    entry.mkdir()  # unlink fails with EISDIR
    desktop.clean(ctx.config)
    err = capsys.readouterr().err
    assert f"E::desktop.py::Could not remove '{entry}': Is a directory" in err


@pytest.mark.parametrize("name", ["a*b.flatimage", "what?.flatimage", "x[1].flatimage",
                                  "back\\slash", "a.b+c(d)|e^f$"])
def test_glob_matches_exactly_the_file_name(name: str) -> None:
    libc = ctypes.CDLL(None)
    libc.fnmatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    pattern = desktop.glob_pattern(name).encode()
    assert libc.fnmatch(pattern, name.encode(), 0) == 0  # as xdgmime matches globs
    for other in ("axb.flatimage", "whatx.flatimage", "x1.flatimage", "aXb", name + "x"):
        if other != name:
            assert libc.fnmatch(pattern, other.encode(), 0) != 0


def test_notify(tmp_path: Path, xdg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a test double for a desktop: a notify-send that records its arguments
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "argv"
    stub = bindir / "notify-send"
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {record}\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    desktop.integrate(context(tmp_path / "a", notify=False))  # type: ignore[arg-type]
    assert not record.exists()
    desktop.integrate(context(tmp_path / "a", notify=True))  # type: ignore[arg-type]
    icon = xdg / "icons/hicolor/64x64/apps/flatimage_MyApp.png"
    assert record.read_text() == f"-i\n{icon}\nStarted 'MyApp' FlatImage\n"
    desktop.integrate(context(tmp_path / "a", name="S", icon=("svg", SVG),  # type: ignore[arg-type]
                              notify=True))
    icon = xdg / "icons/hicolor/scalable/apps/flatimage_S.svg"
    assert record.read_text() == f"-i\n{icon}\nStarted 'S' FlatImage\n"
    # without notify-send: nothing, silently
    monkeypatch.setenv("PATH", "/nonexistent")
    record.unlink()
    desktop.integrate(context(tmp_path / "a", notify=True))  # type: ignore[arg-type]
    assert not record.exists()
