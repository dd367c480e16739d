"""Wrapper: the base of a Filesystem that is a view over another one.

A view overrides what it changes; every other method, every capability flag (the
bool class attributes of :class:`fimfs.vfs.Filesystem`) and ``writable`` are
``inner``'s, so a flag added to the vfs reaches the mount through every view without
anyone forwarding it by hand. A view that sets a flag itself (a class attribute,
e.g. CaseFold's ``case_insensitive = True``) keeps its own value.

Methods are forwarded by binding ``inner``'s methods on the instance: a forwarded
call costs no extra Python frame, which matters on the read path. A view that
rewrites paths must therefore override every method that takes one (a method the
vfs gains later is otherwise forwarded with the path unchanged); a default of the
vfs that it relies on (e.g. ``readdir_attrs`` built on its own ``readdir`` and
``getattr``) it names explicitly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .vfs import Filesystem

#: The capability flags of the vfs (bool class attributes), read by the mount.
FLAGS = tuple(name for name, value in vars(Filesystem).items() if isinstance(value, bool))
#: The properties of the vfs (``writable``), forwarded like the flags.
_PROPERTIES = tuple(name for name, value in vars(Filesystem).items()
                    if isinstance(value, property))
#: The public methods of the vfs.
_METHODS = tuple(name for name, value in vars(Filesystem).items()
                 if callable(value) and not name.startswith("_"))


def _forward(name: str) -> property:
    return property(lambda self: getattr(self.inner, name),
                    doc=f"``inner``'s ``{name}``.")


class Wrapper(Filesystem):
    """``inner`` seen through a view: what a subclass does not override is ``inner``'s."""

    #: The vfs methods this class does not define itself (filled per subclass).
    _forwarded: ClassVar[tuple[str, ...]] = _METHODS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = {name for klass in cls.__mro__[:cls.__mro__.index(Wrapper)] for name in vars(klass)}
        cls._forwarded = tuple(name for name in _METHODS if name not in own)

    def __init__(self, inner: Filesystem) -> None:
        self.inner = inner
        for name in self._forwarded:
            setattr(self, name, getattr(inner, name))


for _name in FLAGS + _PROPERTIES:
    setattr(Wrapper, _name, _forward(_name))
