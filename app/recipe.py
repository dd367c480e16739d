"""Recipes (spec 2.17, 14): curated package lists from the remote, fetched, cached and
installed into an image.

A recipe is ``<remote>/<dist>/latest/<name>.json`` (``fim-remote``; ``<dist>`` is
``FIM_DIST`` in lower case), cached as ``DATA/recipes/<dist>/latest/<name>.json``.
:func:`install` resolves the recipes and their dependencies, then runs the image's
package manager (apt-get, apk or pacman, whichever the image has) as root inside, with
the ``network`` permission for that run only; `fim-recipe` (cli.commands.recipe) then
applies the last ``desktop`` section.

Deliberate differences from FlatImage (docs/desktop.md): downloads use Python's urllib
(HTTP and HTTPS only, a timeout and a size limit, one-line errors) and reach the cache
only when they are a valid recipe (a 404 leaves no empty file); a recipe name must be a
plain name (letters, digits, ``.``, ``_``, ``+``, ``-``; never a path), checked before
any request; dependencies resolve in a fixed order, depth first, each recipe once, so a
diamond is not a cycle, a real cycle is reported with its path, no package is listed
twice, and the desktop section that wins is the last in that order (spec 18.1 #5).
"""

from __future__ import annotations

import json
import os
import re

from fim.app import log
from fim.app.log import CommandError
from fim.osutil import files

TYPE_CHECKING = False  # not typing's: importing typing slows every start-up
if TYPE_CHECKING:
    from collections.abc import Callable

    from fim.app.session import Context

RECIPE_LIMIT = 1 << 20  # bytes a recipe may have
TIMEOUT = 30  # seconds, per connection step
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
FETCH_FAILED = "Failed to fetch recipe"
_INSTALL_FAILED = "Failed to install recipe"
_LOAD_FAILED = "Could not load json recipe"
#: package manager -> paths inside that show the image has it
_MANAGERS = {
    "apt-get": ("/usr/bin/apt-get", "/bin/apt-get"),
    "apk": ("/sbin/apk", "/usr/sbin/apk", "/bin/apk", "/usr/bin/apk"),
    "pacman": ("/usr/bin/pacman", "/bin/pacman"),
}
_APT_SCRIPT = ('export DEBIAN_FRONTEND=noninteractive; '
               'apt-get update && apt-get install -y --no-install-recommends "$@"')


class Recipe:
    """A parsed recipe (spec 14.1)."""

    __slots__ = ("name", "path", "description", "packages", "dependencies", "desktop")

    def __init__(self, name: str, path: str, description: str, packages: list[str],
                 dependencies: list[str], desktop: dict[str, object] | None) -> None:
        self.name = name
        self.path = path
        self.description = description
        self.packages = packages
        self.dependencies = dependencies
        self.desktop = desktop


def valid_name(name: str) -> bool:
    """A recipe name is a name: no path, no space, not empty."""
    return _NAME.fullmatch(name) is not None


def parse(data: bytes, name: str, path: str) -> Recipe:
    """The recipe in ``data``; CommandError with the spec's messages when it is not one."""
    if not data.strip():
        raise CommandError("Empty json file")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise CommandError("Could not parse json file") from None
    if not isinstance(doc, dict):
        raise CommandError("Could not parse json file")
    description = doc.get("description")
    if not isinstance(description, str):
        raise CommandError("Missing 'description' field")
    packages = doc.get("packages")
    if packages is None:
        raise CommandError("Missing 'packages' field")
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        raise CommandError("Invalid 'packages' field")
    for package in packages:
        # an argument of the package manager, never one of its options
        if not package or package.startswith("-") or any(c.isspace() or not c.isprintable()
                                                          for c in package):
            raise CommandError(f"Invalid package name '{package}' in recipe '{name}'")
    deps = doc.get("dependencies")
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        deps = []
    desktop = doc.get("desktop")
    return Recipe(name, path, description, packages, deps,
                  desktop if isinstance(desktop, dict) else None)


# -- downloads ----------------------------------------------------------------------------

def download(url: str, limit: int = RECIPE_LIMIT, timeout: float = TIMEOUT) -> bytes:
    """The body of ``url`` (HTTP or HTTPS); a one-line CommandError otherwise."""
    import ssl
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    def failed(reason: str) -> CommandError:
        return CommandError(f"Could not download '{url}': {reason}")

    if urlsplit(url).scheme not in ("http", "https"):
        raise failed("only http:// and https:// URLs are supported")
    # no file:// or ftp:// handlers, so a redirect cannot leave HTTP(S) either
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(),
                    urllib.request.HTTPSHandler(), urllib.request.HTTPRedirectHandler(),
                    urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor(), urllib.request.UnknownHandler()):
        opener.add_handler(handler)
    try:
        with opener.open(url, timeout=timeout) as response:
            data = response.read(limit + 1)
    except urllib.error.HTTPError as exc:
        raise failed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise failed(_url_error_reason(exc.reason, url, timeout)) from None
    except ssl.SSLError as exc:
        raise failed(f"TLS failure ({exc.reason or exc})") from None
    except TimeoutError:
        raise failed(f"timed out after {timeout:g} s") from None
    except (OSError, ValueError) as exc:  # a reset connection, a malformed URL or reply
        raise failed(str(exc) or type(exc).__name__) from None
    if len(data) > limit:
        raise failed(f"larger than {limit} bytes")
    return data


def _url_error_reason(reason: object, url: str, timeout: float) -> str:
    """One line for what urllib wrapped in a URLError: DNS, TLS, timeout, OS error."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    if isinstance(reason, socket.gaierror):
        return f"could not resolve host '{urlsplit(url).hostname}' ({reason.strerror})"
    if isinstance(reason, ssl.SSLError):
        detail = getattr(reason, "verify_message", None) or reason.reason or reason
        return f"TLS failure ({detail})"
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


# -- the cache and the remote -------------------------------------------------------------

class Source:
    """Where the recipes of one image come from and go to."""

    def __init__(self, ctx: Context, remote: str | None) -> None:
        self.dist = ctx.layout.dist.lower()
        self.remote = None if remote is None else remote.rstrip("/")
        self.cache = os.path.join(ctx.paths.data, "recipes", self.dist, "latest")

    def path(self, name: str) -> str:
        return os.path.join(self.cache, f"{name}.json")

    def url(self, name: str) -> str:
        assert self.remote is not None
        return f"{self.remote}/{self.dist}/latest/{name}.json"

    def fetch(self, name: str) -> Recipe:
        """Download ``name``, check it is a recipe, then cache it."""
        url, path = self.url(name), self.path(name)
        log.info(f"Downloading recipe from '{url}'")
        log.info(f"Saving to '{path}'")
        data = download(url)
        recipe = parse(data, name, path)
        os.makedirs(self.cache, exist_ok=True)
        try:
            files.write_atomic(path, data)
        except OSError as exc:
            raise CommandError(f"Could not save recipe to '{path}': {exc.strerror}") from None
        log.info(f"Successfully downloaded recipe '{name}' to '{path}'")
        return recipe

    def cached(self, name: str) -> Recipe | None:
        path = self.path(name)
        try:
            with open(path, "rb") as f:
                data = f.read(RECIPE_LIMIT + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CommandError(f"Could not read '{path}': {exc.strerror}",
                               _LOAD_FAILED) from None
        try:
            return parse(data, name, path)
        except CommandError as exc:
            raise CommandError(*exc.messages, _LOAD_FAILED) from None


def resolve(names: list[str], get: Callable[[str], Recipe]) -> list[Recipe]:
    """The recipes ``names`` reach through their dependencies, depth first, each once,
    dependencies before the recipes that need them; ``get(name)`` obtains one."""
    done: dict[str, Recipe] = {}
    order: list[Recipe] = []

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name):], name])
            raise CommandError(f"Cyclic dependency for recipe '{name}': {cycle}")
        if name in done:
            return
        if not valid_name(name):
            via = f" (a dependency of '{path[-1]}')" if path else ""
            raise CommandError(f"Invalid recipe name '{name}'{via}")
        recipe = get(name)
        for dep in recipe.dependencies:
            visit(dep, [*path, name])
        done[name] = recipe
        order.append(recipe)

    for name in names:
        visit(name, [])
    return order


def _checked(names: list[str], *wrap: str) -> None:
    """Refuse names that are not recipe names before any request."""
    for name in names:
        if not valid_name(name):
            raise CommandError(f"Invalid recipe name '{name}'", *wrap)


def _remote(ctx: Context, *wrap: str) -> str:
    if ctx.config.remote is None:
        raise CommandError("No remote URL configured", *wrap)
    return ctx.config.remote


# -- the operations -----------------------------------------------------------------------

def fetch(ctx: Context, names: list[str]) -> None:
    """Download the recipes ``names`` and their dependencies into the cache."""
    _checked(names, FETCH_FAILED)
    source = Source(ctx, _remote(ctx, FETCH_FAILED))
    try:
        resolve(names, source.fetch)
    except CommandError as exc:
        raise CommandError(*exc.messages, FETCH_FAILED) from None


def cached(ctx: Context, name: str) -> Recipe | None:
    """The recipe ``name`` from the cache, None when it is not there (a name that is not
    a recipe name cannot be in the cache: never a path)."""
    return Source(ctx, ctx.config.remote).cached(name) if valid_name(name) else None


def _managers_in(ctx: Context) -> set[str]:
    """The package managers the image has (in its layers or its writable upper)."""
    from fim.app.errors import FimError
    from fim.app.layers import discover
    from fim.app.stack import build_stack

    layers = discover(ctx.layout, ctx.paths.layers, ctx.environ())
    if not layers:
        return set()
    upper = ctx.paths.upper
    try:
        stack = build_stack(layers, upper if os.path.isdir(upper) else None)
    except FimError as exc:
        raise CommandError(f"Could not open the layers of the image: {exc}") from None
    found = set()
    try:
        for manager, paths in _MANAGERS.items():
            for path in paths:
                try:
                    stack.getattr(path)
                except OSError:
                    continue
                found.add(manager)
                break
    finally:
        stack.close()
    return found


def package_manager(ctx: Context) -> str:
    """The image's package manager: apt-get, apk or pacman (the distribution's first)."""
    dist = ctx.layout.dist.upper()
    if dist == "BLUEPRINT":
        raise CommandError("Blueprint does not support recipes")
    preferred = {"ALPINE": "apk", "ARCH": "pacman"}.get(dist, "apt-get")
    found = _managers_in(ctx)
    for manager in sorted(_MANAGERS, key=lambda m: m != preferred):
        if manager in found:
            return manager
    raise CommandError(f"The image ({dist}) has no package manager fim knows "
                       "(apt-get, apk or pacman)")


def install_command(manager: str, packages: list[str]) -> list[str]:
    """The command that installs ``packages`` with ``manager`` inside."""
    if manager == "apk":
        return ["apk", "add", "--no-cache", "--update-cache", "--no-progress", *packages]
    if manager == "pacman":
        return ["pacman", "-Syu", "--noconfirm", "--needed", *packages]
    return ["bash", "-c", _APT_SCRIPT, "bash", *packages]


def with_network(ctx: Context) -> Context:
    """``ctx`` with the ``network`` permission added for one run (nothing stored)."""
    import copy

    cfg = copy.copy(ctx.config)
    cfg.permissions = {*ctx.config.permissions, "network"}
    return ctx.with_config(cfg)


def install(ctx: Context, names: list[str]) -> tuple[int, dict[str, object] | None]:
    """Install the packages of the recipes ``names`` and of their dependencies, fetching
    those not cached; the package manager's exit code, and the ``desktop`` section
    that applies when it succeeded (the last in resolution order)."""
    _checked(names, _INSTALL_FAILED)
    source = Source(ctx, _remote(ctx, _INSTALL_FAILED))
    try:
        manager = package_manager(ctx)
    except CommandError as exc:
        raise CommandError(*exc.messages, _INSTALL_FAILED) from None

    def get(name: str) -> Recipe:
        recipe = source.cached(name)
        if recipe is not None:
            log.info(f"Using existing recipe from '{recipe.path}'")
            return recipe
        try:
            return source.fetch(name)
        except CommandError as exc:
            raise CommandError(*exc.messages, FETCH_FAILED) from None

    try:
        recipes = resolve(names, get)
    except CommandError as exc:
        raise CommandError(*exc.messages, _INSTALL_FAILED) from None
    packages = list(dict.fromkeys(p for r in recipes for p in r.packages))
    code = 0
    if packages:
        from fim.app.run import run_program

        log.info(f"Installing with {manager}: {' '.join(packages)}")
        code = run_program(with_network(ctx), install_command(manager, packages),
                           wants_root=True)
    else:
        log.info("No packages to install")
    if code != 0:
        log.emit("E", f"{manager} exited with code {code}", "recipe.py")
        return code, None
    desktops = [r for r in recipes if r.desktop is not None]
    for recipe in desktops:
        log.info(f"Found desktop integration in recipe '{recipe.name}'")
    return code, desktops[-1].desktop if desktops else None

