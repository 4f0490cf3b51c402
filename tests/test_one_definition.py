"""Issue 10, items 8-9: each option, helper and default defined once; no private library API."""

from __future__ import annotations

import dataclasses
import inspect
import re

from qk_spectra_ds.analysis import cli
from qk_spectra_ds.analysis.report import Params

ANALYSIS_COMMANDS = ("clusters", "boxplots", "taxonomy", "report")


def _args_lines(function) -> dict[str, str]:
    """flag -> its help line, from the docstring's Args: section (what fire shows)."""
    section = function.__doc__.split("Args:")[1]
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s+(\w+): (.+)$", section, re.M)}


def test_cli_defaults_are_params_defaults():
    """Every analysis knob a command takes defaults to the value report.Params defines (one place)."""
    defaults = Params()
    for name in ANALYSIS_COMMANDS:
        parameters = inspect.signature(cli.COMMANDS[name]).parameters
        for field in dataclasses.fields(Params):
            if field.name not in parameters:
                continue
            default = parameters[field.name].default
            expected = getattr(defaults, field.name)
            if field.name == "stats":
                default = tuple(default.split(","))
            assert default == expected, (name, field.name, default, expected)


def test_shared_flags_have_one_help_line():
    """A flag that several analysis commands take reads the same in each command's help."""
    lines = {name: _args_lines(cli.COMMANDS[name]) for name in ANALYSIS_COMMANDS}
    shared = {flag for name in ANALYSIS_COMMANDS for flag in lines[name]}
    for flag in shared:
        texts = {lines[name][flag] for name in ANALYSIS_COMMANDS if flag in lines[name]}
        assert len(texts) == 1, (flag, texts)
