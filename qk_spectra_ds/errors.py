"""Exceptions whose message is a complete one-line answer for the user.

The CLIs print ``error: <message>`` for these (no traceback) and exit non-zero.
"""


class QKSpectraError(Exception):
    """Base class: something the user can fix, described in one line."""


def one_line(exc: BaseException, limit: int | None = 300, *, first_line: bool = False) -> str:
    """``exc``'s message on one line, to print or to quote inside another message.

    Whitespace runs are collapsed (``first_line``: only the message's first
    line is kept, for multi-line HTTP errors); a message longer than ``limit``
    characters is cut with "..." (None: never); an empty message gives the
    exception type's name.
    """
    text = str(exc).strip()
    if first_line:
        text = text.splitlines()[0] if text else text
    text = " ".join(text.split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


class ModelSourceError(QKSpectraError):
    """A model cannot be read: missing directory, repo, revision, file or access."""


class CheckpointError(QKSpectraError):
    """A checkpoint is unusable: truncated or corrupt safetensors, missing tensor, NaN/Inf."""


class UnsupportedArchitectureError(QKSpectraError):
    """config.json names a model_type this package does not know how to read."""


class CatalogError(QKSpectraError):
    """An unknown family or a malformed user catalogue."""


class BuildError(QKSpectraError):
    """One or more models of a build failed; the others' results were kept."""

    def __init__(self, message: str, results=(), report: str = "") -> None:
        super().__init__(message)
        self.results = list(results)
        self.report = report
        """The per-model summary (one line each), printed by the CLIs before the error."""
