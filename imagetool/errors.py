"""The exception tree of imagetool and the exit codes the CLI maps it to.

    ImagetoolError                  message + hint; exit 1 (125 under `run`)
    ├── InvalidReference            a name that is not a valid image reference
    ├── ImageNotFound               not in the local store
    ├── ManifestError               a manifest/index/config imagetool cannot use
    ├── RegistryError               the registry answered with an error (keeps .code)
    │   ├── AuthError               401/403, bad credentials
    │   └── NotFoundError           unknown repository, tag or blob
    ├── TransportError              DNS, connect, TLS, timeouts, resets after retries
    ├── DigestError                 bytes that do not match their digest / diff_id
    ├── UnpackError                 a layer that cannot be applied
    │   └── UnsafeLayer             a layer that tries to escape the root
    ├── ArchiveError                a tarball or layout that cannot be loaded/saved
    ├── NetworkError                a network config, a CNI plugin or a published port refused
    └── ContainerError              the runtime failed (exit 125)
        ├── CommandNotExecutable    exit 126
        └── CommandNotFound         exit 127

Errors raised by the `store` package (store.errors.StoreError) are mapped by the CLI as well.
"""

from __future__ import annotations


class ImagetoolError(Exception):
    """Base class: `message` says what, where and why; `hint` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class InvalidReference(ImagetoolError):
    pass


class ImageNotFound(ImagetoolError):
    pass


class ManifestError(ImagetoolError):
    pass


class RegistryError(ImagetoolError):
    def __init__(self, message: str, hint: str | None = None, code: str | None = None,
                 status: int | None = None):
        super().__init__(message, hint)
        self.code = code
        self.status = status


class AuthError(RegistryError):
    pass


class NotFoundError(RegistryError):
    pass


class TransportError(ImagetoolError):
    pass


class DigestError(ImagetoolError):
    pass


class UnpackError(ImagetoolError):
    pass


class UnsafeLayer(UnpackError):
    pass


class ArchiveError(ImagetoolError):
    pass


class NetworkError(ImagetoolError):
    pass


class ContainerError(ImagetoolError):
    exit_code = 125


class CommandNotExecutable(ContainerError):
    exit_code = 126


class CommandNotFound(ContainerError):
    exit_code = 127


def report(exc: BaseException, *, in_run: bool = False) -> int:
    """Write `imagetool: error: …` (one line, plus `hint: …`) to stderr; return the exit code.

    The one place that maps exceptions to exit codes, for the full CLI and the fast paths alike:
    ImagetoolError → its exit_code (1, or 125 under `run`; 126/127 keep theirs); store and OS
    errors → 1 (125 under `run`); anything else is an internal error, reported the same way.
    """
    import sys

    from store.errors import StoreError

    code = 125 if in_run else 1
    if isinstance(exc, ImagetoolError):
        message, hint = exc.message, exc.hint
        if exc.exit_code != 1:
            code = exc.exit_code
    elif isinstance(exc, (StoreError, OSError)):
        message, hint = str(exc), getattr(exc, "hint", None)
    else:
        message = f"internal error: {type(exc).__name__}: {exc}"
        hint = "run with --debug for a traceback and report it"
    sys.stderr.write(f"imagetool: error: {_printable(message)}\n")
    if hint:
        sys.stderr.write(f"hint: {_printable(hint)}\n")
    return code


def printable(text: object, keep_newlines: bool = False) -> str:
    """The one display escape for text that came from images, registries or archives: every
    character that is not printable (ESC, BEL, other C0 and C1 controls, DEL) becomes "?", so
    none reaches a terminal as an escape sequence. `keep_newlines`: newlines and tabs stay (the
    multi-line --explain output)."""
    return "".join(c if c.isprintable() or (keep_newlines and c in "\n\t") else "?" for c in str(text))


def _printable(text: object) -> str:
    """One line with no control characters: messages quote registry and archive content."""
    return printable(" ".join(str(text).split()))
