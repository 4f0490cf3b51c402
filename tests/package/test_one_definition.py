"""Issue 10, items 8-9: each option, helper and default defined once; no private library API."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from qk_spectra_ds.analysis import cli, cli_commands, cli_flags
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


# ---------------------------------------------------------------- helpers defined once


def _definitions(*names: str) -> list[str]:
    """'module:name' for each top-level function of the package named one of ``names``."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "qk_spectra_ds"
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name in names:
                found.append(f"{path.relative_to(root)}:{node.name}")
    return found


@pytest.mark.slow
def test_each_shared_helper_is_defined_once():
    """One error formatter, one comma-list parser, one way to silence datasets (they existed 2-4 times)."""
    for job in (
        ("one_line", "_one_line", "_first_line"),
        ("as_list", "parse_models"),
        ("quiet_datasets", "_quiet_datasets"),
    ):
        assert len(_definitions(*job)) == 1, _definitions(*job)


def test_one_line():
    from qk_spectra_ds.errors import one_line

    assert one_line(ValueError("a\n  b\tc")) == "a b c"
    assert one_line(ValueError("first  line\nsecond"), first_line=True) == "first line"
    assert one_line(KeyError()) == "KeyError"
    long = one_line(ValueError("x" * 500), limit=50)
    assert len(long) == 50 and long.endswith("...")
    assert one_line(ValueError("x" * 500), limit=None) == "x" * 500


def test_as_list_takes_any_iterable():
    from qk_spectra_ds.cli_util import as_list

    assert as_list(" a, b ,,c ") == ["a", "b", "c"]
    assert as_list({"b": 1}.keys()) == ["b"]
    assert as_list(("a", " ")) == ["a"]
    assert as_list(None) is None and as_list("") is None


# ---------------------------------------------------------------- exceptions recognised by class


class _ProxyRefused(ConnectionError):
    """A network error whose class name no list of names could know."""


def _yaml_error():
    import yaml

    class CardHeaderError(yaml.YAMLError):  # defined outside the yaml package
        pass

    return CardHeaderError("mapping values are not allowed here")


def test_hub_and_yaml_errors_are_recognised_by_class(monkeypatch):
    """Subclasses of the network and YAML exceptions are load errors of one line, whatever they are named."""
    import datasets
    import pytest

    from qk_spectra_ds.analysis import verification
    from qk_spectra_ds.analysis.loading import LoadError, load_spectra

    for error, words in (
        (_ProxyRefused("connection refused by proxy"), ("org/name", "@v1", "_ProxyRefused", "proxy")),
        (_yaml_error(), ("YAML header", "mapping values")),
    ):

        def fail(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(datasets, "load_dataset", fail)
        monkeypatch.setattr(
            verification, "verify_hub", lambda dataset, family, revision: revision
        )  # its own errors: test_integrity
        monkeypatch.setattr(
            "qk_spectra_ds.hub_access.check_reachable", lambda what, timeout=None: None
        )  # test_trust_hub_access
        with pytest.raises(LoadError) as info:
            load_spectra("org/name", "fam", revision="v1" if isinstance(error, ConnectionError) else None)
        message = str(info.value)
        assert "\n" not in message and all(word in message for word in words), message


# ---------------------------------------------------------------- item 9: dead code, private library API


@pytest.mark.slow
def test_no_private_library_api_and_no_dead_helpers():
    """The package calls no private ``datasets`` API, and the removed dead helpers stay removed."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "qk_spectra_ds"
    source = "\n".join(path.read_text(encoding="utf-8") for path in root.rglob("*.py"))
    for private in ("._to_yaml_dict", "._to_yaml_list", "._from_yaml"):
        assert private not in source, private
    assert not _definitions("arrow_schema")
    from qk_spectra_ds.builder import weights

    assert not hasattr(weights.ModelSource, "describe")


def test_card_dataset_info_is_what_datasets_reads(tmp_path):
    """The card's dataset_info: per config, the schema's features and the train split's bytes and rows."""
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    from qk_spectra_ds import dataset_card, schema

    summaries = [
        {"config": "A", "model_id": "org/a", "n_rows": 6, "n_bytes": 100, "path": "data/A/org--a.parquet"},
        {"config": "A", "model_id": "org/b", "n_rows": 4, "n_bytes": 50, "path": "data/A/org--b.parquet"},
        {"config": "B", "model_id": "org/c", "n_rows": 3, "n_bytes": 7, "path": "data/B/org--c.parquet"},
    ]
    path = tmp_path / "README.md"
    path.write_text(dataset_card.render_card(summaries), encoding="utf-8")
    infos = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(path).data)
    expected = {"all": (157, 13), "A": (150, 10), "B": (7, 3)}
    assert set(infos) == set(expected)
    for name, (n_bytes, n_rows) in expected.items():
        assert infos[name].features == schema.features()
        split = infos[name].splits["train"]
        assert (split.num_bytes, split.num_examples) == (n_bytes, n_rows), name


def test_commands_take_their_flags_from_one_declaration():
    """clusters/boxplots/taxonomy/compare declare no flag of their own that `report` declares: they take its."""
    full = inspect.signature(cli_commands.report).parameters
    for name in ("clusters", "boxplots", "taxonomy", "compare"):
        command = cli.COMMANDS[name]
        declared = set(inspect.signature(command.__wrapped__).parameters) - {"flags"}
        assert not declared & set(full), (name, declared & set(full))
        for flag, parameter in inspect.signature(command).parameters.items():
            assert flag not in full or parameter == full[flag], (name, flag)

    def source(a: int = 1, b: str = "x", c: float = 2.0):
        """Args:\n    a: the a.\n    b: the b.\n    c: the c."""

    @cli_flags.flags_of(source, "a", "c")
    def sub(*, d: bool = False, **flags):
        """A subset of source's flags and one of its own."""
        return flags, d

    assert list(inspect.signature(sub).parameters) == ["a", "c", "d"]
    from qk_spectra_ds.cli_util import signature_flags

    assert {name: flag.kind for name, flag in signature_flags(sub).items()} == {"a": int, "c": float, "d": bool}
    assert sub() == ({"a": 1, "c": 2.0}, False)
    assert sub(a=5, d=True) == ({"a": 5, "c": 2.0}, True)
