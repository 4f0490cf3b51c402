"""Shared pytest setup: keep every test away from the real Hugging Face Hub.

At import time (before any test module imports ``huggingface_hub`` or ``datasets``, which read
their settings once, at import) this points ``HF_ENDPOINT`` at a local port where the
``hub_server`` fixture serves the Hub protocol (see ``tests/hub_server.py``), and moves every
Hugging Face cache into a temporary directory. Everything goes through ``os.environ``, so
subprocesses launched by tests inherit the same endpoint, token and caches.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

if "huggingface_hub" in sys.modules or "datasets" in sys.modules:  # pragma: no cover - set-up error
    raise RuntimeError(
        "tests/conftest.py must run before huggingface_hub/datasets are imported (they read HF_ENDPOINT "
        "and the cache paths at import time). Something imported them earlier (a plugin or a root conftest)."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HUB_PORT = _free_port()
HUB_ENDPOINT = f"http://127.0.0.1:{HUB_PORT}"
HF_TEST_TOKEN = "hf_test_dummy_token"
HF_TEST_HOME = tempfile.mkdtemp(prefix="qk_spectra_hf_home_")

os.environ.update(
    {
        "HF_ENDPOINT": HUB_ENDPOINT,
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": HF_TEST_TOKEN,
        "HF_HOME": HF_TEST_HOME,
        "HF_HUB_CACHE": os.path.join(HF_TEST_HOME, "hub"),
        "HF_DATASETS_CACHE": os.path.join(HF_TEST_HOME, "datasets"),
        "HF_XET_CACHE": os.path.join(HF_TEST_HOME, "xet"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "10",
    }
)
for _var in (
    "HF_DATASETS_OFFLINE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HUGGINGFACE_HUB_TOKEN",
    "HUGGINGFACE_CO_STAGING",
    "HF_HUB_ENABLE_HF_TRANSFER",
    "HF_TOKEN_PATH",
):
    os.environ.pop(_var, None)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so tests can `from hub_server import ...`
from hub_server import HubServer  # noqa: E402


@pytest.fixture(scope="session")
def hub_server():
    """The session's Hub-protocol server, started on first use at ``HF_ENDPOINT``.

    Repos persist for the whole session: name them with ``unique_repo_name``.
    """
    server = HubServer(port=HUB_PORT).start()
    assert server.url == os.environ["HF_ENDPOINT"]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def hub_api(hub_server):
    """A ``huggingface_hub.HfApi`` bound to the test server (with the dummy token)."""
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub_server.url, token=HF_TEST_TOKEN)


def unique_repo_name(prefix: str = "repo", namespace: str = "qk-test") -> str:
    """A fresh ``namespace/prefix-xxxxxxxx`` repo id (the server's state lives for the session)."""
    return f"{namespace}/{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(name="unique_repo_name", scope="session")
def unique_repo_name_fixture():
    """The :func:`unique_repo_name` helper, as a fixture: ``unique_repo_name("ds")``."""
    return unique_repo_name


def pytest_collection_modifyitems(config, items):
    """Every test that uses the Hub test server is marked ``hub`` (so ``-m "not hub"`` leaves out the server)."""
    for item in items:
        if "hub_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.hub)


def pytest_unconfigure(config):
    shutil.rmtree(HF_TEST_HOME, ignore_errors=True)


# ---------------------------------------------------------------- analysis half (analyze.py)


@pytest.fixture
def analyze_cli():
    """``analyze.main(argv) -> exit status`` from the repo root's analyze.py, run in this process."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "analyze.py"
    spec = importlib.util.spec_from_file_location("analyze_cli_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
