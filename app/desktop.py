"""Desktop integration on the host (spec 13) and the start notification (spec 15).

At the start of every run (app.run.run_program, spec 8.2 step 1) :func:`integrate`
writes into ``$XDG_DATA_HOME`` (default ``~/.local/share``), for the enabled
integrations of ``fim-desktop``: the ``.desktop`` entry (rewritten every run, so
``Exec`` follows a moved image), the MIME XML (and ``update-mime-database`` only when
the application XML lacks the image's file name) and the icons (PNG/JPG resized to
the 9 standard sizes with Pillow, SVG as is; an existing file is never overwritten).
Then, with ``fim-notify on``, ``notify-send`` when the host has it. Failures are only
logged: a run never fails because of its desktop integration. :func:`clean` removes
the files again (``fim-desktop clean``).

Deliberate differences from FlatImage (docs/desktop.md): the MIME type of a name with
characters a MIME type cannot hold (a space, ``(``...) spells them ``_``, so the entry
passes ``desktop-file-validate``; the MIME glob escapes ``*``, ``?``, ``[`` and ``\\``
in the image's file name; ``Exec``, ``Name``, ``Comment`` and the lists are escaped as
the Desktop Entry specification asks; settings with control characters, or a category
with ``;``, are refused (:func:`problem`), when stored and again when written; a JPG
icon is cleaned as the PNG files it became.
"""

from __future__ import annotations

import os
import subprocess

from fim.app import log
from fim.osutil import files

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from fim.app.config import Config, Desktop
    from fim.app.session import Context

ICON_SIZES = (16, 22, 24, 32, 48, 64, 96, 128, 256)
_MIME_SUBTYPE_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
_NOTIFY_TIMEOUT = 5  # seconds
_MIME_TIMEOUT = 60

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

#: The generic FlatImage icon (apps/flatimage.svg and mimetypes/application-flatimage.svg).
GENERIC_ICON = """\
<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">
  <rect x="4" y="4" width="56" height="56" rx="10" fill="#2e3440"/>
  <path d="M20 16h26v8H29v8h14v8H29v12h-9z" fill="#88c0d0"/>
</svg>
"""


# -- the texts (spec 13.2, 13.3) ---------------------------------------------------------

def _string(text: str) -> str:
    """A Desktop Entry string value: backslash and control characters escaped, and a
    leading space as ``\\s`` (parsers drop the blanks after ``=``)."""
    escaped = (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
               .replace("\r", "\\r"))
    return "\\s" + escaped[1:] if escaped.startswith(" ") else escaped


def _list(values: list[str]) -> str:
    """A Desktop Entry list value (Categories, MimeType): each item a string whose ``;``
    is escaped, each followed by ``;``."""
    return "".join(_string(v).replace(";", "\\;") + ";" for v in values)


def _has_control(text: str) -> bool:
    return any(c < " " or "\x7f" <= c <= "\x9f" for c in text)


def problem(desktop: Desktop) -> str | None:
    """Why the desktop settings cannot be written, in one line; None when they can. The
    stored configuration is input like any other (an image's author can write any JSON
    into it, bypassing ``fim-desktop setup``), so it is checked where it is stored and
    again where files are written: no control character (a newline would start a new
    key, ``Exec=`` included, or put a newline in a file name), no ``/`` in the name,
    and each category one non-empty name without ``;``."""
    import json

    fields = [("Application name", desktop.name)]
    fields += [("Desktop category", c) for c in desktop.categories]
    for what, text in fields:
        shown = json.dumps(text)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"{what} {shown} is not valid UTF-8"
        if _has_control(text):
            return f"{what} {shown} cannot contain control characters"
    if "/" in desktop.name:
        return "Application name cannot contain the '/' character"
    for category in desktop.categories:
        if not category or ";" in category:
            return f"Desktop category {json.dumps(category)} must be one name (not empty, no ';')"
    return None


def _exec_path(path: str) -> str:
    """``path`` as a quoted Exec argument (quoting rule first, then string escapes)."""
    quoted = "".join("\\" + c if c in '"`$\\' else c for c in path)
    return _string(f'"{quoted}"').replace("%", "%%")


def mime_type(name: str) -> str:
    """``application/flatimage_<name>``; characters a MIME subtype cannot hold become ``_``."""
    return "application/flatimage_" + "".join(
        c if c in _MIME_SUBTYPE_CHARS else "_" for c in name)


def _xml(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def glob_pattern(file_name: str) -> str:
    """A shared-mime-info glob that matches exactly ``file_name`` (fnmatch metacharacters
    bracketed; a backslash is escaped, as fnmatch reads one)."""
    return "".join(f"[{c}]" if c in "*?[" else "\\\\" if c == "\\" else c
                   for c in file_name)


def entry(desktop: Desktop, image: str) -> str:
    """The .desktop file of the application (spec 13.2; no final newline)."""
    name = desktop.name
    return "\n".join([
        "[Desktop Entry]",
        f"Name={_string(name)}",
        "Type=Application",
        "Comment=" + _string(f'FlatImage distribution of "{name}"'),
        f"Exec={_exec_path(image)} %F",
        f"Icon={_string(f'flatimage_{name}')}",
        f"MimeType={_list([mime_type(name)])}",
        f"Categories={_list(sorted(desktop.categories))}",
    ])


def mimetype(desktop: Desktop, image: str) -> str:
    """The application's MIME XML (spec 13.3; no final newline)."""
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<mime-info xmlns="http://www.freedesktop.org/standards/shared-mime-info">',
        f'  <mime-type type="{_xml(mime_type(desktop.name))}">',
        "    <comment>FlatImage Application</comment>",
        f'    <glob weight="100" pattern="{_glob_attr(image)}"/>',
        '    <sub-class-of type="application/x-executable"/>',
        '    <generic-icon name="application-flatimage"/>',
        "  </mime-type>",
        "</mime-info>",
    ])


def _glob_attr(image: str) -> str:
    return _xml(glob_pattern(os.path.basename(image)))


# -- where (spec 13.1) --------------------------------------------------------------------

def xdg_data_home() -> str:
    """``$XDG_DATA_HOME``, else ``$HOME/.local/share`` (HOME from the passwd database
    when unset)."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return xdg
    return os.path.join(os.path.expanduser("~"), ".local", "share")


class Paths:
    """The files of one application's integration under ``xdg``."""

    def __init__(self, xdg: str, name: str) -> None:
        self.xdg = xdg
        self.name = name
        self.entry = os.path.join(xdg, "applications", f"flatimage-{name}.desktop")
        self.mime_dir = os.path.join(xdg, "mime")
        self.mime_app = os.path.join(self.mime_dir, "packages", f"flatimage-{name}.xml")
        self.mime_generic = os.path.join(self.mime_dir, "packages", "flatimage.xml")
        self.hicolor = os.path.join(xdg, "icons", "hicolor")

    def png(self, size: int, kind: str) -> str:
        """``kind`` is ``apps`` or ``mimetypes``."""
        stem = f"flatimage_{self.name}" if kind == "apps" else f"application-flatimage_{self.name}"
        return os.path.join(self.hicolor, f"{size}x{size}", kind, f"{stem}.png")

    def svg(self, kind: str) -> str:
        stem = f"flatimage_{self.name}" if kind == "apps" else f"application-flatimage_{self.name}"
        return os.path.join(self.hicolor, "scalable", kind, f"{stem}.svg")

    def generic_icons(self) -> list[str]:
        return [os.path.join(self.hicolor, "scalable", "mimetypes", "application-flatimage.svg"),
                os.path.join(self.hicolor, "scalable", "apps", "flatimage.svg")]

    def icons(self, kind: str) -> list[str]:
        """The icon files of a stored icon of type ``kind`` (png, jpg: PNG sizes; svg)."""
        if kind == "svg":
            return [self.svg("apps"), self.svg("mimetypes")]
        return [self.png(s, k) for s in ICON_SIZES for k in ("apps", "mimetypes")]


# -- writing ------------------------------------------------------------------------------

def _replace(path: str, data: bytes) -> None:
    """Write ``path`` whole (a temporary file renamed over it)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    files.write_atomic(path, data)


def _create(path: str, data: bytes) -> None:
    """Write ``path`` unless it exists (never overwritten)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path, "xb") as f:
            f.write(data)
    except FileExistsError:
        pass


def update_mime_database(xdg: str) -> None:
    """``update-mime-database XDG/mime`` (the host's; a missing one is only logged)."""
    import shutil

    log.emit("I", f"Updating mime database '{xdg}'", "desktop.py")
    if not os.path.isdir(os.path.join(xdg, "mime")):
        return  # nothing was ever integrated there
    tool = shutil.which("update-mime-database")
    if tool is None:
        log.emit("E", "Could not find 'update-mime-database'", "desktop.py")
        return
    try:
        proc = subprocess.run([tool, os.path.join(xdg, "mime")], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=_MIME_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.emit("E", f"update-mime-database failed: {exc}", "desktop.py")
        return
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [""])[-1]
        log.emit("E", f"update-mime-database exited with {proc.returncode}: {reason}",
                 "desktop.py")


def _integrate_mime(desktop: Desktop, image: str, paths: Paths) -> None:
    try:
        with open(paths.mime_app, encoding="utf-8", errors="replace") as f:
            current = f.read()
    except OSError:
        current = None
    if current is not None and f'pattern="{_glob_attr(image)}"' in current:
        log.emit("D", "Skipping mime database update", "desktop.py")
        return
    log.emit("I", "Integrating mime database", "desktop.py")
    _replace(paths.mime_app, mimetype(desktop, image).encode())
    try:
        with open(paths.mime_generic, "rb") as f:
            generic_ok = f.read() == GENERIC_MIME.encode()
    except OSError:
        generic_ok = False
    if not generic_ok:
        _replace(paths.mime_generic, GENERIC_MIME.encode())
    update_mime_database(paths.xdg)


def _resized(data: bytes, size: int) -> bytes:
    """A PNG of the image ``data`` with its longer side scaled to ``size`` (like
    ``magick -resize SxS``)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        mode = "RGBA" if img.mode in ("RGBA", "LA", "P", "PA") or "transparency" in img.info \
            else "RGB"
        img = img.convert(mode)
        w, h = img.size
        scale = size / max(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                         Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, "PNG")
        return out.getvalue()


def _integrate_icons(cfg: Config, paths: Paths) -> None:
    if cfg.icon is None:
        log.emit("D", "No icon stored", "desktop.py")
        return
    if os.path.exists(paths.png(64, "apps")) or os.path.exists(paths.svg("apps")):
        return
    kind, data = cfg.icon
    try:
        if kind == "svg":
            _create(paths.svg("mimetypes"), data)
            _create(paths.svg("apps"), data)
        else:
            for size in ICON_SIZES:
                png = _resized(data, size)
                _create(paths.png(size, "mimetypes"), png)
                _create(paths.png(size, "apps"), png)
        for generic in paths.generic_icons():
            _create(generic, GENERIC_ICON.encode())
    except Exception as exc:  # Pillow's errors, a bad image, OSError: only logged
        log.emit("D", f"Could not integrate the icon: {type(exc).__name__}: {exc}",
                 "desktop.py")


def notify(cfg: Config, paths: Paths) -> None:
    """``notify-send -i ICON "Started '<name>' FlatImage"`` when the host has it."""
    import shutil

    tool = shutil.which("notify-send")
    if tool is None:
        return
    icon = paths.png(64, "apps")
    if not os.path.exists(icon):
        icon = paths.svg("apps")
    try:
        subprocess.run([tool, "-i", icon, f"Started '{paths.name}' FlatImage"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=_NOTIFY_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        pass


def integrate(ctx: Context) -> None:
    """Desktop integration and notification of a run (spec 8.2 step 1); never raises."""
    try:
        _integrate(ctx)
    except Exception as exc:
        log.emit("W", f"Desktop integration failed: {type(exc).__name__}: {exc}", "desktop.py")


def _integrate(ctx: Context) -> None:
    from fim.app.image import is_url

    if is_url(ctx.image):  # `fim run URL`: no file for a menu entry to start
        log.emit("D", "No desktop integration for a remote image", "desktop.py")
        return
    cfg = ctx.config
    desktop = cfg.desktop
    if desktop is None or not desktop.name:
        log.emit("D", "Missing or misconfigured desktop integration", "desktop.py")
        return
    reason = problem(desktop)
    if reason is not None:
        log.emit("E", f"Refusing to write the desktop integration: {reason}", "desktop.py")
        return
    paths = Paths(xdg_data_home(), desktop.name)
    for item, step in (("ENTRY", _integrate_entry), ("MIMETYPE", _integrate_mime)):
        if item in desktop.integrations:
            try:
                step(desktop, ctx.image, paths)
            except OSError as exc:
                log.emit("E", f"Could not integrate {item.lower()}: {exc}", "desktop.py")
    if "ICON" in desktop.integrations:
        _integrate_icons(cfg, paths)
    if cfg.notify:
        notify(cfg, paths)
    else:
        log.emit("D", "Notify is disabled", "desktop.py")


def _integrate_entry(desktop: Desktop, image: str, paths: Paths) -> None:
    _replace(paths.entry, entry(desktop, image).encode())


# -- fim-desktop clean --------------------------------------------------------------------

def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.emit("E", f"Could not remove '{path}': {exc.strerror}", "desktop.py")
        return
    log.emit("I", f"Removed file '{path}'", "desktop.py")


def clean(cfg: Config) -> None:
    """Remove the files of the enabled integrations (the generic ones are kept)."""
    desktop = cfg.desktop
    assert desktop is not None and problem(desktop) is None
    paths = Paths(xdg_data_home(), desktop.name)
    if "ENTRY" in desktop.integrations:
        _remove(paths.entry)
    if "MIMETYPE" in desktop.integrations:
        _remove(paths.mime_app)
        update_mime_database(paths.xdg)
    if "ICON" in desktop.integrations and cfg.icon is not None:
        for path in paths.icons(cfg.icon[0]):
            _remove(path)
