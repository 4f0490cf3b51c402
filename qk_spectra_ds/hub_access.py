"""Checks before any Hub work: the form of a repo id, and whether the Hub answers at all.

Without them a mistyped ``--push-to-hub`` or ``--dataset`` id is found only after a build
(and blamed on the network), and a machine without a network waits through the client's
retries (up to half a minute of ``Retrying in 8s``) before its error. Here the id's form is
checked locally, and the Hub is asked once, with a short timeout and no retries: any HTTP
answer means it is reachable (what the answer means is left to the real request).
"""

from __future__ import annotations

from huggingface_hub import constants, get_session
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import httpx, validate_repo_id

from .errors import HubAccessError, one_line

REACH_TIMEOUT = 5.0
"""Seconds to wait for the Hub's first answer (connect and read); a refused connection fails at once."""
REPO_FORM = "a Hub repo id of the form ORG/NAME (letters, digits, '-', '_', '.'; e.g. my-org/qk-spectra)"


def check_repo_id(repo_id: object, flag: str) -> str:
    """``repo_id`` if it has the form ORG/NAME the Hub accepts, else one line naming the flag and the form."""
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise HubAccessError(f"{flag} {repo_id!r} is not {REPO_FORM}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubAccessError(f"{flag} {repo_id!r} is not {REPO_FORM}: {one_line(exc, first_line=True)}") from None
    return repo_id


def check_reachable(what: str, timeout: float | None = None) -> None:
    """One request to the Hub endpoint, no retries: a one-line HubAccessError if nothing answers.

    Skipped in offline mode (``HF_HUB_OFFLINE=1``), where the clients read their caches.
    ``timeout`` (default :data:`REACH_TIMEOUT`): seconds for the connection and the answer.
    """
    if constants.HF_HUB_OFFLINE:
        return
    try:
        get_session().head(
            constants.ENDPOINT, timeout=REACH_TIMEOUT if timeout is None else timeout, follow_redirects=False
        )
    except (httpx.TransportError, OSError) as exc:
        raise HubAccessError(
            f"cannot reach the Hub at {constants.ENDPOINT} for {what} ({type(exc).__name__}: "
            f"{one_line(exc, first_line=True)}): check the network or HF_ENDPOINT (HF_HUB_OFFLINE=1 reads the local cache)"
        ) from None
