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


# Every exception class of the package is defined here (issue 19: errors in one place); the modules that
# raise them re-export their names, so the old import paths (AnalysisError from the loader...) still work.


class UsageError(QKSpectraError):
    """A command line the CLI cannot run: unknown flag or command, a missing or mistyped value."""


class HubAccessError(QKSpectraError):
    """A repo id that cannot name a Hub repo, or a Hub that does not answer."""


class SchemaError(QKSpectraError, ValueError):
    """The data does not follow a schema version this package understands (a ``ValueError`` too, for old callers)."""


class IntegrityError(QKSpectraError, ValueError):
    """A data file or a stored value is not what was written (corrupt or edited): one line naming the file."""


class DiskWriteError(QKSpectraError, OSError):
    """A file could not be written for lack of space or quota; nothing of it was kept."""


class DatasetRepoError(QKSpectraError):
    """A dataset directory's files or card cannot be used as they are (corrupt, or would be replaced)."""


class CardError(DatasetRepoError):
    """The card's YAML header does not parse as plain data."""


# ---------------------------------------------------------------- the builder


class WeightRangeError(CheckpointError):
    """A head block holds NaN/Inf or values too large or too small for a safe float64 factorization."""


class PublishError(QKSpectraError):
    """The dataset could not be published (access, conflict, existing tag...)."""


class BehaviourError(QKSpectraError):
    """The behaviour scores cannot be measured for a model (weights, model class, vocabulary, probe options)."""


# ---------------------------------------------------------------- the analysis


class AnalysisError(QKSpectraError, ValueError):
    """An expected, user-facing failure of the analysis (printed as one line by the CLI)."""


class LoadError(AnalysisError):
    """The dataset, config or selection cannot be loaded."""


class FileChecksumError(LoadError, IntegrityError):
    """A data file's SHA-256 or size is not the card's record of it (nothing was read from it)."""


class StoredValueError(AnalysisError, IntegrityError):
    """A stored statistic, metric or positional column disagrees with the stored arrays."""


class CompareError(AnalysisError):
    """Two sides that cannot be compared (shapes differ, nothing in common, an unknown metric)."""


class UnsafePickleError(AnalysisError):
    """A pickle references something outside the legacy format's globals and opcodes; nothing was executed."""


class LegacyFormatError(AnalysisError):
    """A (safe) pickle does not have the legacy layout, sizes or values."""
