"""Issue 19 item 5: every flag the help shows (short and long) is the flag the parser reads, one meaning per letter.

fire derived ``-x`` from first letters by its own rule, separately for
keyword-only parameters, so ``analyze.py compare --help`` offered ``-m`` for
both ``--models`` and ``--metrics`` (and the parser refused ``-m`` as
ambiguous); ``-q`` was ``--quiet`` in some commands and nothing in others;
the build's deprecated ``--revision`` had ``-r``. These tests walk every
command of both CLIs through the help users read and the parser they run.
"""

from __future__ import annotations

import functools
import re

import pytest

from qk_spectra_ds.analysis import cli as analysis_cli
from qk_spectra_ds.builder import cli as builder_cli
from qk_spectra_ds.cli_util import signature_flags

FLAG_LINE = re.compile(r"^    (?:-(\w), )?--([\w-]+)=", re.MULTILINE)
VALUES = {str: "x", int: "1", float: "1.5"}


def _recording(function, seen: list):
    """``function``'s flags, recorded instead of run."""

    @functools.wraps(function)
    def record(**kwargs):
        seen.append(kwargs)

    return record


def _commands() -> list[tuple[str, str | None, object]]:
    """(CLI, command or None, flag function) for every command of both CLIs."""
    return [("build", None, builder_cli.build)] + [("analyze", name, f) for name, f in analysis_cli.COMMANDS.items()]


def _help(cli: str, command: str | None, capfd) -> str:
    if cli == "build":
        rc = builder_cli.cli(["--help"])
    else:
        rc = analysis_cli.main([command, "--help"])
    assert rc == 0
    return "".join(capfd.readouterr())


def _run(cli: str, command: str | None, argv: list[str], monkeypatch) -> tuple[int, list]:
    """The exit status and the flags the command would have been called with (nothing runs)."""
    seen: list = []
    if cli == "build":
        monkeypatch.setattr(builder_cli, "build", _recording(builder_cli.build, seen))
        return builder_cli.cli(argv), seen
    monkeypatch.setitem(analysis_cli.COMMANDS, command, _recording(analysis_cli.COMMANDS[command], seen))
    return analysis_cli.main([command, *argv]), seen


def test_every_short_flag_in_the_help_is_unique_and_is_what_the_parser_reads(capfd, monkeypatch, tmp_path):
    meaning: dict[str, set[str]] = {}
    for cli, command, function in _commands():
        shown = FLAG_LINE.findall(_help(cli, command, capfd))
        where = f"{cli} {command or ''}".strip()
        names = {name.replace("_", "-") for name in signature_flags(function)}
        assert {long for _, long in shown} == names, where  # every flag shown, spelled with hyphens
        letters = [letter for letter, _ in shown if letter]
        assert len(letters) == len(set(letters)), (where, shown)  # no letter for two flags
        kinds = {name: flag.kind for name, flag in signature_flags(function).items()}
        for letter, long in shown:
            name = long.replace("-", "_")
            if letter:
                meaning.setdefault(letter, set()).add(long)
                value = [] if kinds[name] is bool else [str(tmp_path / "o") if name == "out" else VALUES[kinds[name]]]
                rc, seen = _run(cli, command, [f"-{letter}", *value], monkeypatch)
                assert rc == 0 and seen and name in seen[0], (where, letter, long, capfd.readouterr().err)
            elif re.match(r"^[a-z]$", long[0]):  # a letter the help does not show is refused, in one line
                rc, seen = _run(cli, command, [f"-{long[0]}"], monkeypatch)
                err = capfd.readouterr().err
                if all(letter_ != long[0] for letter_, _ in shown):
                    assert rc == 1 and not seen and err.count("\n") == 1 and f"unknown flag -{long[0]}" in err, (
                        where,
                        err,
                    )
    assert {letter: longs for letter, longs in meaning.items() if len(longs) > 1} == {}  # one meaning per letter
    assert "q" not in meaning or meaning["q"] == {"quiet"}


def test_the_builds_deprecated_revision_has_no_short_flag(capfd, monkeypatch):
    text = _help("build", None, capfd)
    assert re.search(r"^    --revision=", text, re.MULTILINE) and not re.search(r"^    -r, ", text, re.MULTILINE)
    rc, seen = _run("build", None, ["-r", "dev"], monkeypatch)
    err = capfd.readouterr().err
    assert rc == 1 and not seen and "unknown flag -r" in err


def test_both_spellings_of_a_multi_word_flag_work(monkeypatch):
    for spelling in ("--n-clusters", "--n_clusters"):
        rc, seen = _run("analyze", "report", [spelling, "3"], monkeypatch)
        assert rc == 0 and seen[0]["n_clusters"] == 3, spelling
    for spelling in ("--null-seed", "--null_seed"):
        rc, seen = _run("build", None, ["--family", "F", spelling, "7"], monkeypatch)
        assert rc == 0 and seen[0]["null_seed"] == "7", spelling


def test_a_misspelt_flag_is_suggested_in_the_users_spelling(capfd, monkeypatch):
    for typed, suggested in (("--n-clusterz", "--n-clusters"), ("--n_clusterz", "--n_clusters")):
        rc, seen = _run("analyze", "report", [typed, "3"], monkeypatch)
        assert rc == 1 and not seen and f"did you mean {suggested}?" in capfd.readouterr().err


@pytest.mark.parametrize("letter", ["m", "q", "s"])
def test_compare_letters_that_were_shown_or_read_inconsistently(letter, capfd, monkeypatch):
    """-m (--models and --metrics), -q and -s (short in compare, not in report): none is a short flag of compare."""
    text = _help("analyze", "compare", capfd)
    assert not re.search(rf"^    -{letter}, ", text, re.MULTILINE)
    rc, seen = _run("analyze", "compare", [f"-{letter}"], monkeypatch)
    assert rc == 1 and not seen and f"unknown flag -{letter}" in capfd.readouterr().err


def test_a_letter_of_another_command_is_refused_naming_this_commands_short_flags(capfd, monkeypatch):
    """-r is --revision in report, but import_legacy has no --revision: refused, listing import_legacy's own letters."""
    rc, seen = _run("analyze", "import_legacy", ["-r", "x"], monkeypatch)
    err = capfd.readouterr().err
    assert rc == 1 and not seen and "unknown flag -r" in err and "its short flags are -o (" in err, err
