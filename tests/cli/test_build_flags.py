"""Issue 19, item 5: the build's commit target is --branch; --revision stays as a deprecated alias that warns."""

from __future__ import annotations

import pytest

from qk_spectra_ds.builder import cli
from qk_spectra_ds.cli_util import UsageError


def test_branch_flag_and_its_deprecated_alias(capsys):
    assert cli.branch_flag("dev", None) == "dev"
    assert cli.branch_flag(None, None) is None
    assert capsys.readouterr().err == ""
    assert cli.branch_flag(None, "dev") == "dev"
    assert "--revision is deprecated" in capsys.readouterr().err
    assert cli.branch_flag("dev", "dev") == "dev"
    with pytest.raises(UsageError, match="disagree"):
        cli.branch_flag("dev", "main")


def test_branch_is_a_publish_flag(tmp_path):
    """Without --push-to-hub, --branch (like --revision before it) is refused before any work."""
    with pytest.raises(UsageError, match="--branch only applies with --push-to-hub"):
        cli.check_flag_combination({"family", "branch"})
    assert cli.build.__doc__.count("branch: Branch of the Hub dataset repo") == 1


def test_branch_reaches_publish(monkeypatch, tmp_path, capsys):
    """--skip-build --push-to-hub X --revision B publishes to branch B (and warns), as --branch B does."""
    from qk_spectra_ds.builder import publish

    seen = []

    class Result:
        def summary(self):
            return "published"

    monkeypatch.setattr(publish, "check_target", lambda repo, version: None)
    monkeypatch.setattr(publish, "publish", lambda out, repo, **kw: seen.append(kw["branch"]) or Result())
    for flag in ("--branch", "--revision"):
        rc = cli.cli(["--skip-build", "--push-to-hub", "org/name", flag, "dev", "--out", str(tmp_path)])
        assert rc in (0, None), capsys.readouterr().err
    assert seen == ["dev", "dev"]
    assert "--revision is deprecated" in capsys.readouterr().err


def test_docs_spell_flags_with_hyphens():
    """README and both CLIs' help spell multi-word flags one way, with hyphens (both spellings are accepted)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for path in (
        root / "README.md",
        root / "qk_spectra_ds" / "builder" / "cli.py",
        root / "qk_spectra_ds" / "analysis" / "cli.py",
        root / "qk_spectra_ds" / "analysis" / "cli_commands.py",
        root / "qk_spectra_ds" / "analysis" / "cli_flags.py",
    ):
        found = re.findall(r"--[a-z]+_[a-z_]+", path.read_text(encoding="utf-8"))
        assert not found, (path.name, found)
