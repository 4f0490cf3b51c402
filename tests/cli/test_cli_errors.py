"""Strict CLIs and one line for every failure (issue 9, items 13 and 14).

Both CLIs must refuse a bad command line before doing any work: an unknown or misspelt flag
(naming the closest valid one), a value of the wrong type, a blank value, an unusable --out or
--device, a missing torch. Values are kept as typed (``--family 1e3`` is the string "1e3").
Every failure is exactly one ``error: ...`` line on stderr with exit status 1, and nothing is
written. Most cases run the CLIs' own entry points in this process (the same code path as the
scripts, minus interpreter start-up); the ones that depend on the process itself (no torch, the
network) run ``python build_dataset.py`` as a subprocess.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import QK_LLAMA, assert_bad_config_is_one_line, assert_one_error, record_builds, run_script, write_qk_llama

from qk_spectra_ds import dataset_repo
from qk_spectra_ds.builder import pipeline as build
from qk_spectra_ds.builder.architectures import model_type_for
from qk_spectra_ds.builder.pipeline import build_model
from qk_spectra_ds.cli_util import DEBUG_ENV, run_cli
from qk_spectra_ds.errors import CheckpointError, QKSpectraError, UnsupportedArchitectureError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = QK_LLAMA


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return write_qk_llama(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def build_cli():
    """``build_dataset.cli(argv) -> exit status``, from the repo root's script, run in this process."""
    spec = importlib.util.spec_from_file_location("build_dataset_under_test", ROOT / "build_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cli


@pytest.fixture
def builds(monkeypatch) -> list:
    """Records every model the builder starts on (and builds it as usual), to show no work began."""
    return record_builds(monkeypatch)


# ------------------------------------------------------------------ item 13: unknown flags, before any work


@pytest.mark.parametrize(
    "typo, suggestion",
    [
        (["--forse"], "--force"),
        (["--devcie", "cuda"], "--device"),
        (["--famly", "X"], "--family"),
        (["--push_to_hb", "a/b"], "--push_to_hub"),
        (["--skip-bild"], "--skip-build"),
    ],
)
def test_misspelt_build_flag_is_refused_before_building(
    typo, suggestion, build_cli, builds, model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    rc = build_cli(["--family", "Tiny", "--models", str(model_dir), "--out", str(out), "--quiet", *typo])
    assert_one_error(rc, capsys.readouterr().err, f"unknown flag {typo[0]}", f"did you mean {suggestion}?")
    assert builds == [] and not out.exists()


ANALYZE_COMMANDS = ["clusters", "boxplots", "taxonomy", "report", "import_legacy"]


@pytest.mark.parametrize("command", ANALYZE_COMMANDS)
def test_misspelt_analyze_flag_is_refused_before_reading(command, analyze_cli, tmp_path, capsys):
    """The dataset does not exist: had the command started, the error would be about it instead."""
    source = (
        ["--pickles", str(tmp_path / "nowhere")]
        if command == "import_legacy"
        else ["--dataset", str(tmp_path / "nowhere")]
    )
    out = tmp_path / "out"
    rc = analyze_cli([command, *source, "--family", "X", "--out", str(out), "--quite"])
    assert_one_error(rc, capsys.readouterr().err, "unknown flag --quite", "did you mean --quiet?")
    assert not out.exists()


def test_analyze_suggests_the_flag_of_its_own_command(analyze_cli, tmp_path, capsys):
    rc = analyze_cli(["boxplots", "--dataset", str(tmp_path), "--family", "X", "--stat", "MEAN"])
    assert_one_error(
        rc, capsys.readouterr().err, "unknown flag --stat for analyze.py boxplots", "did you mean --stats?"
    )


@pytest.mark.parametrize(
    "argv, words",
    [
        (["cluster", "--dataset", "d"], ["unknown command 'cluster'", "did you mean clusters?"]),
        (["importlegacy"], ["unknown command 'importlegacy'", "did you mean import_legacy?"]),
        (["plot"], ["unknown command 'plot'", "commands: clusters, boxplots, taxonomy, report, import_legacy"]),
        ([], ["no command given", "clusters"]),
        (["--dataset", "d", "clusters"], ["a command comes first"]),
    ],
)
def test_unknown_or_missing_analyze_command(argv, words, analyze_cli, capsys):
    assert_one_error(analyze_cli(argv), capsys.readouterr().err, *words)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, words",
    [
        (["Tiny"], ["unexpected argument 'Tiny'", "flags only"]),  # fire would have made it --family
        (["--family", "Tiny", "--force", "false"], ["unexpected argument 'false'", "--force=false"]),
        (["--family", "Tiny", "--family", "Other"], ["--family is given twice"]),
        (["--family"], ["--family needs a value"]),
        (["--family", "--force"], ["--family needs a value, got the flag --force", "--family=VALUE"]),
        (["-f", "Tiny"], ["unknown flag -f", "--family, --force"]),
        (["--family", "Tiny", "--force=maybe"], ["--force is a switch"]),
        (["--family", ""], ["--family is blank"]),
        (["--family", "   "], ["--family is blank"]),
        (["--family", "Tiny", "--models", ",,"], ["--models ',,' names nothing"]),
        (["--family", "Tiny", "--models", ""], ["--models is blank"]),
        (["--family", "Tiny", "--shard", "3/2"], ["--shard '3/2' is not of the form I/N"]),
        (["--family", "Tiny", "--shard", "-1/2"], ["--shard '-1/2' is not of the form I/N"]),
        (["--family", "Tiny", "--version", "v1.0.0"], ["--version only applies with --push-to-hub"]),
        (["--family", "Tiny", "--private"], ["--private only applies with --push-to-hub"]),
        (["--family", "Tiny", "--push-to-hub", "a/b", "--version", "1.0"], ["version '1.0' is not of the form vMAJOR"]),
        (["--family", "Tiny", "--push-to-hub", "not a repo"], ["--push-to-hub 'not a repo' is not a Hub repo id"]),
        (["--skip-build", "--out", "x"], ["--skip-build only makes sense with --push-to-hub"]),
        (["--skip-build", "--push-to-hub", "a/b", "--family", "Tiny"], ["--family would be ignored"]),
    ],
)
def test_bad_build_command_line_is_one_line_before_any_work(
    argv, words, build_cli, builds, model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    extra = [] if "--models" in argv or "--skip-build" in argv else ["--models", str(model_dir)]
    rc = build_cli([*argv, *extra, "--out", str(out), "--quiet"] if "--out" not in argv else [*argv, "--quiet"])
    assert_one_error(rc, capsys.readouterr().err, *words)
    assert builds == [] and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, words",
    [
        (["--n-clusters", "0x10"], ["--n-clusters takes a whole number", "'0x10'"]),
        (["--n_clusters", "2.5"], ["--n_clusters takes a whole number", "'2.5'"]),
        (["--n-bins", "1e3"], ["--n-bins takes a whole number"]),
        (["--quantile", "nan"], ["--quantile takes a finite number"]),
        (["--quantile", "1.5"], ["--quantile must be in (0, 1]"]),
        (["--n-clusters", "-3"], ["--n_clusters must be >= 1"]),  # -3 is a value, not a flag
        (["--seed", "-1"], ["--seed must be at least 0, not -1"]),
        (["--jobs", "0"], ["--jobs must be at least 1, not 0"]),
        (["--skip-layers-below", "-2"], ["--skip-layers-below must be at least 0"]),
        (["--stats", ",,"], ["--stats ',,' names nothing"]),
        (["--models", " , "], ["--models ' , ' names nothing"]),
        (["--family", ""], ["--family is blank"]),
        (["--skip-nonfinite=2"], ["--skip-nonfinite is a switch"]),
    ],
)
def test_bad_analyze_values_are_refused_before_reading(flags, words, analyze_cli, tmp_path, capsys):
    out = tmp_path / "out"
    base = {"--dataset": str(tmp_path / "nowhere"), "--family": "X", "--out": str(out)}
    for flag in flags:
        base.pop(flag, None)
    rc = analyze_cli(["report", *[x for item in base.items() for x in item], *flags])
    assert_one_error(rc, capsys.readouterr().err, *words)
    assert not out.exists()


# ------------------------------------------------------------------ item 13: values stay as typed


@pytest.mark.slow
@pytest.mark.parametrize("family", ["1e3", "0x10", "007"])
def test_family_that_looks_like_a_number_stays_a_string(family, build_cli, model_dir, tmp_path, capsys):
    """fire made 1e3 -> 1000.0, 0x10 -> 16 and 007 -> 7, building into the wrong config."""
    out = tmp_path / "out"
    assert build_cli(["--family", family, "--models", str(model_dir), "--out", str(out), "--quiet"]) == 0, (
        capsys.readouterr()
    )
    assert [p.relative_to(out).as_posix() for p in dataset_repo.model_files(out)] == [f"data/{family}/tiny.parquet"]


@pytest.mark.slow
def test_switch_spellings(build_cli, builds, model_dir, tmp_path, capsys):
    """--force, --force=true, --noforce and --force=false are the documented spellings of a switch."""
    out = tmp_path / "out"
    argv = ["--family", "Tiny", "--models", str(model_dir), "--out", str(out), "--quiet"]
    for extra, status in (
        ([], "built"),
        (["--noforce"], "skipped"),
        (["--force=false"], "skipped"),
        (["--force"], "built"),
        (["--force=True"], "built"),
        (["--no-force"], "skipped"),
    ):
        assert build_cli([*argv, *extra]) == 0
        statuses = re.findall(r"^(built|skipped)\s+tiny\b", capsys.readouterr().out, re.M)
        assert statuses == [status], (extra, statuses)


# ------------------------------------------------------------------ item 13: --out and --device


def _out_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    return {"file": (a_file, "is a file, not a directory"), "under-a-file": (a_file / "sub", "cannot be created")}


@pytest.mark.parametrize("case", ["file", "under-a-file"])
def test_unusable_build_out_is_refused_before_building(case, build_cli, builds, model_dir, tmp_path, capsys):
    out, words = _out_cases(tmp_path)[case]
    rc = build_cli(["--family", "Tiny", "--models", str(model_dir), "--out", str(out), "--quiet"])
    assert_one_error(rc, capsys.readouterr().err, f"--out {out}", words)
    assert builds == []


@pytest.mark.parametrize("case", ["file", "under-a-file"])
@pytest.mark.parametrize("command", ["clusters", "report"])
def test_unusable_analyze_out_is_refused_before_reading(case, command, analyze_cli, tmp_path, capsys):
    out, words = _out_cases(tmp_path)[case]
    rc = analyze_cli([command, "--dataset", str(tmp_path / "nowhere"), "--family", "X", "--out", str(out)])
    assert_one_error(rc, capsys.readouterr().err, f"--out {out}", words)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write to any directory")
def test_read_only_out_is_refused(build_cli, builds, model_dir, tmp_path, capsys):
    parent = tmp_path / "read-only"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        rc = build_cli(["--family", "Tiny", "--models", str(model_dir), "--out", str(parent / "out"), "--quiet"])
        assert_one_error(rc, capsys.readouterr().err, "is not writable")
        assert builds == []
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:x", "cuda:99", "mps"])
def test_unusable_device_is_refused_before_building(device, build_cli, builds, model_dir, tmp_path, capsys):
    """cuda:99 is refused with or without a GPU (no CUDA at all, or not that many devices)."""
    out = tmp_path / "out"
    rc = build_cli(["--family", "Tiny", "--models", str(model_dir), "--out", str(out), "--device", device, "--quiet"])
    assert_one_error(rc, capsys.readouterr().err, "--device", device)
    assert builds == [] and not out.exists()


def test_cuda_without_a_gpu_is_refused_before_building(build_cli, builds, model_dir, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "out"
    rc = build_cli(["--family", "Tiny", "--models", str(model_dir), "--out", str(out), "--device", "cuda", "--quiet"])
    assert_one_error(rc, capsys.readouterr().err, "--device cuda", "no CUDA device", "--device cpu")
    assert builds == [] and not out.exists()


# ------------------------------------------------------------------ item 13: no torch, help


BLOCK_TORCH = (
    "import runpy, sys; sys.modules['torch'] = None; sys.argv[0] = {script!r}; "
    "runpy.run_path({script!r}, run_name='__main__')"
)


@pytest.mark.slow
def test_building_without_torch_says_to_install_the_build_extra(model_dir, tmp_path):
    out = tmp_path / "out"
    code = BLOCK_TORCH.format(script=str(ROOT / "build_dataset.py"))
    proc = run_script("--family", "Tiny", "--models", str(model_dir), "--out", str(out), "--quiet", code=code)
    assert_one_error(proc.returncode, proc.stderr, "building needs torch", "pip install 'qk-spectra-ds[build]'")
    assert not out.exists()
    listing = run_script("--list", code=code)  # what does not build does not need torch
    assert listing.returncode == 0 and "MiniLM" in listing.stdout, listing.stderr


def test_help_anywhere_shows_help_and_builds_nothing(build_cli, builds, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for argv in (["-h"], ["--family", "Tiny", "--models", str(model_dir), "--out", str(out), "--help"]):
        assert build_cli(argv) == 0
        text = "".join(capsys.readouterr())
        assert "--family=FAMILY" in text and "Flags are checked before any work" in text
    assert builds == [] and not out.exists()


def test_analyze_help(analyze_cli, capsys):
    assert analyze_cli(["--help"]) == 0
    text = "".join(capsys.readouterr())
    assert all(command in text for command in ANALYZE_COMMANDS)
    assert analyze_cli(["import-legacy", "-h"]) == 0  # import-legacy is import_legacy
    assert "--pickles=PICKLES" in "".join(capsys.readouterr())


# ------------------------------------------------------------------ item 14: catalogue files


@pytest.mark.parametrize(
    "name, text, words",
    [
        ("broken.yaml", "X: [a\n  b: c\n", ["is not valid YAML: line 2, column 4"]),
        ("broken.json", '{"X": ["a"]', ["is not valid JSON"]),
        ("binary.yaml", b"\xff\xfe\x00", ["cannot be read as UTF-8 text"]),
        ("folder", None, ["is a directory"]),
        ("list.yaml", "- a\n- b\n", ["must map family names to lists"]),
    ],
)
def test_bad_catalog_file_is_one_line(name, text, words, build_cli, tmp_path, capsys):
    path = tmp_path / name
    if text is None:
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    assert_one_error(
        build_cli(["--list", "--catalog", str(path)]), capsys.readouterr().err, f"catalog file {path}", *words
    )


def test_catalog_python_tag_is_refused_and_never_run(build_cli, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"X: !!python/object/apply:os.mkdir [{str(marker)!r}]\n")  # yaml.unsafe_load would run it
    rc = build_cli(["--list", "--catalog", str(path)])
    assert_one_error(
        rc, capsys.readouterr().err, "is not valid YAML", "could not determine a constructor", "python/object"
    )
    assert not marker.exists()


# ------------------------------------------------------------------ item 14: publishing without a network


@pytest.fixture
def closed_endpoint():
    """An http URL on 127.0.0.1 whose port is bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.slow
def test_publish_without_network_is_one_line(closed_endpoint, build_cli, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert build_cli(["--family", "Tiny", "--models", str(model_dir), "--out", str(out), "--quiet"]) == 0
    before = sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file())
    proc = run_script(
        "--skip-build",
        "--push-to-hub",
        "org/name",
        "--version",
        "v0.1.0",
        "--out",
        str(out),
        "--quiet",
        env={"HF_ENDPOINT": closed_endpoint},
    )
    assert_one_error(proc.returncode, proc.stderr, "cannot reach the Hub", closed_endpoint, "org/name", "HF_ENDPOINT")
    assert sorted((p.relative_to(out), p.read_bytes()) for p in out.rglob("*") if p.is_file()) == before


# ------------------------------------------------------------------ item 14: config values


CONFIG_DAMAGE = {
    "heads-zero": ({"num_attention_heads": 0}, ["num_attention_heads is 0", "positive whole number"]),
    "kv-heads-zero": ({"num_key_value_heads": 0}, ["num_key_value_heads is 0"]),  # was ZeroDivisionError
    "kv-heads-negative": ({"num_key_value_heads": -2}, ["num_key_value_heads is -2"]),
    "width-string": ({"hidden_size": "32"}, ['hidden_size is "32"']),
    "layers-bool": ({"num_hidden_layers": True}, ["num_hidden_layers is true"]),
    "heads-float": ({"num_attention_heads": 4.0}, ["num_attention_heads is 4.0"]),
    "layers-negative": ({"num_hidden_layers": -1}, ["num_hidden_layers is -1"]),
    "head-dim-zero": ({"head_dim": 0}, ["head_dim is 0"]),
    "head-dim-list": ({"head_dim": [8]}, ["head_dim is [8]"]),
    "kv-heads-do-not-divide": (
        {"num_key_value_heads": 3},
        ["num_attention_heads 4 is not a multiple of num_key_value_heads 3"],
    ),
    "width-does-not-split": ({"hidden_size": 30}, ["hidden_size 30 is not a multiple of num_attention_heads 4"]),
}


@pytest.mark.parametrize("damage", sorted(CONFIG_DAMAGE))
def test_bad_config_value_is_one_line_naming_the_field(damage, tmp_path):
    changes, words = CONFIG_DAMAGE[damage]
    model = write_qk_llama(tmp_path / damage, {**CONFIG, **changes})
    assert_bad_config_is_one_line(model, tmp_path / "out", words)


@pytest.mark.parametrize("config, kind", [([CONFIG], "array"), ("llama", "string"), (None, "null")])
def test_config_that_is_not_an_object_is_one_line(config, kind, tmp_path):
    model = write_qk_llama(tmp_path / "model", config if config is not None else CONFIG)
    if config is None:
        (model / "config.json").write_text("null")
    with pytest.raises(CheckpointError, match=f"config.json holds a JSON {kind}, not an object"):
        build_model(str(model), "Bad", tmp_path / "out", device="cpu", progress=False)


def test_model_type_that_is_not_a_string_is_unsupported():
    with pytest.raises(UnsupportedArchitectureError, match=r"unsupported model_type \['llama'\]"):
        model_type_for({**CONFIG, "model_type": ["llama"]})


@pytest.mark.parametrize("field", ["multi_query", "new_decoder_architecture"])
def test_falcon_switch_that_is_not_a_boolean(field):
    """The string "false" is truthy: read as is, it would pick the wrong Q/K layout silently."""
    config = {
        "model_type": "falcon",
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "hidden_size": 32,
        field: "false",
    }
    with pytest.raises(CheckpointError, match=f'config.json: {field} is "false", but must be true or false'):
        arch = model_type_for(config)
        arch.shape(config), arch.layout(config)


@pytest.mark.slow
def test_bad_config_through_the_cli_keeps_the_good_model(build_cli, model_dir, tmp_path, capsys):
    bad = write_qk_llama(tmp_path / "bad", {**CONFIG, "num_key_value_heads": 0})
    out = tmp_path / "out"
    rc = build_cli(["--family", "Mixed", "--models", f"{bad},{model_dir}", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "ZeroDivisionError" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: 1 of 2 model(s) failed ({bad}: config.json: num_key_value_heads is 0, but must be a positive whole number)"
    ]
    assert [p.name for p in dataset_repo.model_files(out)] == ["tiny.parquet"]


# ------------------------------------------------------------------ item 14: anything unforeseen


def _boom():
    raise RuntimeError("something nobody foresaw\n  on a second line")


def test_unexpected_exception_is_one_line_with_a_debug_hint(monkeypatch, capsys):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    assert run_cli(_boom) == 1
    err = capsys.readouterr().err
    assert err == (
        "error: unexpected RuntimeError: something nobody foresaw on a second line "
        f"(rerun with {DEBUG_ENV}=1 for the traceback)\n"
    )
    monkeypatch.setenv(DEBUG_ENV, "1")
    assert run_cli(_boom) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in _boom" in err
    assert err.splitlines()[-1] == "error: unexpected RuntimeError: something nobody foresaw on a second line"


@pytest.mark.slow
def test_unexpected_exception_inside_an_analysis_is_one_line(analyze_cli, monkeypatch, tmp_path, capsys):
    from qk_spectra_ds.analysis import loading

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(loading, "load_spectra", lambda *a, **k: {}["no such key"])
    rc = analyze_cli(["clusters", "--dataset", str(tmp_path), "--family", "X", "--out", str(tmp_path / "out")])
    assert_one_error(rc, capsys.readouterr().err, "unexpected KeyError: 'no such key'", f"{DEBUG_ENV}=1")


def test_errors_are_qkspectra_errors(tmp_path):
    """The preflight refusals are QKSpectraError (library callers can catch them), and one line."""
    with pytest.raises(QKSpectraError, match="--device 'gpu' is not cpu, cuda or cuda:N"):
        build.build_family("Tiny", tmp_path / "out", models=["x"], device="gpu", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_output_into_a_closed_pipe_is_not_an_error():
    """``--list | head``: the reader goes away before the CLI writes; exit 0 and nothing on stderr."""
    code = (
        "import sys, time; sys.argv = ['build_dataset.py', '--list']; time.sleep(2); "
        "from qk_spectra_ds.builder.cli import cli; sys.exit(cli())"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # before the CLI prints anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == "", err
