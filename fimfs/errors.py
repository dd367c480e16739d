"""The error type of the fimfs library.

Filesystem operations report per-path failures as ``OSError`` with a real errno
(that is what FUSE and the kernel need). Everything else the library refuses, such
as a malformed or unsupported image, is a :class:`FimfsError` carrying a one-line
message meant for the user.
"""


class FimfsError(Exception):
    """A failure with a one-line message for the user (no traceback needed)."""


class ImageError(FimfsError):
    """The image is malformed, truncated or inconsistent."""


class UnsupportedError(ImageError):
    """The image is well formed but uses something this reader cannot handle."""
