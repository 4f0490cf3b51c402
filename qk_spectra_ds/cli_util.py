"""The machinery the two CLIs share: strict flags checked before any work, and one-line errors.

``call_cli`` reads the command line against the signature of the function it
runs (and, for ``analyze.py``, picks the command first). Every flag must be a
parameter of that function (a misspelt one is refused at once, with the
closest valid spelling), its value is converted by the parameter's annotation
(``str`` flags stay exactly the string typed, so ``--family 1e3`` is "1e3"
and ``--version 1.0`` is "1.0"; ``int`` flags take decimal integers only),
and only then is the function called. fire is used for ``--help`` alone: it
renders each flag with its line from the function's docstring.

``run_cli`` turns every exception into ``error: <one line>`` on stderr and
exit status 1; unexpected ones add a hint to rerun with ``QK_SPECTRA_DEBUG=1``,
which prints the traceback.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import re
import sys
import traceback
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BuildError, QKSpectraError, UsageError, one_line
from .paths import check_output_dir
from .textutil import as_list

DEBUG_ENV = "QK_SPECTRA_DEBUG"
HELP_TOKENS = ("--help", "-h")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Flag:
    """One flag of a CLI function: its parameter name and the type its value converts to."""

    name: str
    kind: type  # str, int, float or bool


# ---------------------------------------------------------------- list flags


# ---------------------------------------------------------------- parsing flags against a signature


def signature_flags(function: Callable) -> dict[str, Flag]:
    """The flags of ``function``: one per parameter, typed by its annotation (or its default's type)."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # an annotation that cannot be evaluated: fall back to the defaults' types
        hints = {}
    flags = {}
    for param in inspect.signature(function).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        flags[param.name] = Flag(param.name, flag_kind(hints.get(param.name), param.default))
    return flags


def flag_kind(annotation: Any, default: Any = None) -> type:
    """str, int, float or bool for an annotation such as ``int``, ``str | None`` or ``Optional[float]``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = options[0] if len(options) == 1 else str
    if annotation in (str, int, float, bool):
        return annotation
    if (
        annotation is None
        and default is not None
        and not isinstance(default, type)
        and type(default) in (int, float, bool)
    ):
        return type(default)
    return str  # anything else (or no annotation) reaches the function as the string typed


def parse_flags(
    function: Callable,
    argv: list[str],
    prog: str,
    *,
    list_flags: Collection[str] = (),
    minimums: Mapping[str, float] | None = None,
    output_dirs: Collection[str] = (),
    short: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """The keyword arguments that ``argv`` gives ``function``, or None if it asks for help.

    Accepts ``--name VALUE``, ``--name=VALUE``, ``--name-with-dashes`` (the
    spelling the docs use; the parameter name itself, with underscores, works too), the
    ``short`` flags (``-o DIR``, as the help shows them; default
    :func:`short_flags` of ``function`` alone), ``--switch`` /
    ``--noswitch`` / ``--switch=false`` for bools. Refuses, each in one line:
    unknown flags (naming the closest valid one), positional arguments, a flag
    given twice, a missing value, blank values, values that are not of the
    flag's type, numbers below ``minimums``, ``list_flags`` that name nothing,
    and ``output_dirs`` that cannot be written.
    """
    flags = signature_flags(function)
    short = (
        short_flags([function]) if short is None else {k: v for k, v in short.items() if v in flags}
    )  # this command's
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token in HELP_TOKENS:
            return None
        name, typed, value = _read_flag(token, flags, short, prog, argv[i - 2] if i >= 2 else None)
        flag = flags[name]
        if value is None:
            if i >= len(argv):
                raise UsageError(f"{typed} needs a value ({prog} --help describes it)")
            if _looks_like_flag(argv[i]):
                raise UsageError(
                    f"{typed} needs a value, got the flag {argv[i]} (for a value that starts with -, write {typed}=VALUE)"
                )
            value = argv[i]
            i += 1
        if name in values:
            raise UsageError(f"{spelled[name]} is given twice ({prog} takes each flag once)")
        values[name] = convert_value(flag, value, typed)
        spelled[name] = typed
    _check_values(function, values, spelled, list_flags, minimums or {}, output_dirs)
    return values


def convert_value(flag: Flag, value: str, typed: str) -> Any:
    """``value`` as the flag's type, or a one-line UsageError; str values are kept exactly as typed."""
    if flag.kind is bool:
        if value.strip().lower() in _TRUE:
            return True
        if value.strip().lower() in _FALSE:
            return False
        raise UsageError(f"{typed} is a switch: write {typed} or {typed}=false, not {typed}={value!r}")
    if not value.strip():
        raise UsageError(f"{typed} is blank: give a value, or leave the flag out")
    if flag.kind is int:
        if not _INT.match(value.strip()):
            raise UsageError(f"{typed} takes a whole number (like 6), not {value!r}")
        return int(value)
    if flag.kind is float:
        if not _FLOAT.match(value.strip()):
            raise UsageError(f"{typed} takes a finite number (like 0.96), not {value!r}")
        return float(value)
    return value


def _read_flag(
    token: str, flags: Mapping[str, Flag], short: Mapping[str, str], prog: str, previous: str | None
) -> tuple[str, str, str | None]:
    """(parameter name, flag as typed, value or None) of one flag token; bool switches get their value."""
    if not _looks_like_flag(token):
        hint = ""
        if token.strip().lower() in _TRUE + _FALSE and previous and _looks_like_flag(previous):
            hint = f"; a switch takes no separate value: write {previous}={token}"
        raise UsageError(f"unexpected argument {token!r}: {prog} takes flags only (--name VALUE){hint}")
    typed, has_value, value = token.partition("=")
    key = typed.lstrip("-").replace("-", "_")
    if not token.startswith("--"):  # -o: a short flag, as the help shows them
        if len(key) == 1 and key in short:
            key = short[key]
        else:
            raise UsageError(_unknown_short_flag(typed, key, flags, short, prog))
    if key not in flags:
        negated = re.sub(r"^no_?", "", key)
        if key != negated and negated in flags and flags[negated].kind is bool and not has_value:
            return negated, typed, "false"
        raise UsageError(_unknown_flag(typed, key, flags, prog))
    if flags[key].kind is bool and not has_value:
        return key, typed, "true"
    return key, typed, value if has_value else None


def _unknown_flag(typed: str, key: str, flags: Mapping[str, Flag], prog: str) -> str:
    """'unknown flag --forse for build_dataset.py: did you mean --force?' (or the list of flags)."""
    dash = "_" if "_" in typed else "-"  # the suggestion follows the user's spelling; the docs use hyphens
    close = difflib.get_close_matches(key, list(flags), n=1, cutoff=0.6)
    if close:
        return f"unknown flag {typed} for {prog}: did you mean --{close[0].replace('_', dash)}? (see {prog} --help)"
    known = ", ".join("--" + name.replace("_", dash) for name in flags)
    return f"unknown flag {typed} for {prog}; its flags are {known}"


def _unknown_short_flag(typed: str, key: str, flags: Mapping[str, Flag], short: Mapping[str, str], prog: str) -> str:
    """'unknown flag -f for build_dataset.py (it could be --family, --force): ...', naming the short flags there are."""
    matches = [long_flag(name) for name in flags if name[0] == key] if len(key) == 1 else []
    which = f" (it could be {', '.join(matches)}: write it out)" if matches else ""
    shorts = ", ".join(f"-{letter}" for letter in sorted(short)) or "none"
    return f"unknown flag {typed} for {prog}{which}; its short flags are {shorts} (see {prog} --help)"


def long_flag(name: str) -> str:
    """How the docs and messages spell the flag of parameter ``name``: ``n_clusters`` -> ``--n-clusters``.

    The parser accepts the parameter name with underscores too; everything the package writes uses hyphens.
    """
    return "--" + name.replace("_", "-")


def short_flags(functions: Iterable[Callable], deprecated: Collection[str] = ()) -> dict[str, str]:
    """The short flags of a CLI, ``{letter: parameter name}``, one meaning per letter in every command.

    A flag gets its first letter when no other flag of any command of the CLI
    starts with it (so ``-q`` is never ``--quiet`` in one command and nothing,
    or ``--quantile``, in another); ``deprecated`` flags (kept for old command
    lines) get none, and ``-h`` stays help.
    """
    claims: dict[str, set[str]] = {}
    for function in functions:
        for name in signature_flags(function):
            claims.setdefault(name[0], set()).add(name)
    return {
        letter: name
        for letter, (name, *others) in sorted(claims.items())
        if not others and name not in deprecated and letter != "h"
    }


def _looks_like_flag(token: str) -> bool:
    """True for ``--name``, ``--name=...`` and ``-x``; False for values, including ``-3`` and ``-0.5``."""
    return token.startswith("--") or bool(re.match(r"^-[A-Za-z]", token))


def _check_values(function, values, spelled, list_flags, minimums, output_dirs) -> None:
    """Refuse list flags naming nothing, numbers below their minimum and unwritable output directories."""
    defaults = {p.name: p.default for p in inspect.signature(function).parameters.values()}
    for name in list_flags:
        if name in values:
            as_list(values[name], spelled[name])
    for name, minimum in minimums.items():
        if values.get(name) is not None and values[name] < minimum:
            raise UsageError(f"{spelled[name]} must be at least {minimum}, not {values[name]}")
    for name in output_dirs:
        value = values.get(name, defaults.get(name))
        if isinstance(value, str):
            check_output_dir(value, spelled.get(name, f"--{name}"))


# ---------------------------------------------------------------- checks shared with the library


# ---------------------------------------------------------------- running a CLI


def call_cli(
    component: Callable | Mapping[str, Callable],
    argv: list[str] | None = None,
    *,
    name: str,
    list_flags: Collection[str] = (),
    minimums: Mapping[str, float] | None = None,
    output_dirs: Collection[str] = (),
    deprecated: Collection[str] = (),
) -> Any:
    """Run a function (or one command of a dict of them) with the flags of ``argv``, checked first.

    ``--help`` (or ``-h``) anywhere a flag may stand shows the help for the
    function or the command list. ``deprecated`` flags still work but get no short flag.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    short = short_flags(component.values() if isinstance(component, Mapping) else [component], deprecated)
    path: list[str] = []
    function = component
    prog = name
    if isinstance(component, Mapping):
        command = _pick_command(component, argv, name)
        if command is None:
            return show_help(component, [], name)
        function, path, prog, argv = component[command], [command], f"{name} {command}", argv[1:]
    options = {"list_flags": list_flags, "minimums": minimums, "output_dirs": output_dirs, "short": short}
    kwargs = parse_flags(function, argv, prog, **options)
    if kwargs is None:
        return show_help(component, path, name, deprecated=deprecated)
    return function(**kwargs)


def _pick_command(commands: Mapping[str, Callable], argv: list[str], name: str) -> str | None:
    """The command ``argv`` starts with (``import-legacy`` = ``import_legacy``), None for help, else UsageError."""
    listing = ", ".join(commands)
    if not argv or argv[0] in HELP_TOKENS:
        if not argv:
            raise UsageError(
                f"no command given: python {name} COMMAND [--flags], COMMAND one of {listing} (--help explains)"
            )
        return None
    command = argv[0].replace("-", "_")
    if command in commands:
        return command
    if _looks_like_flag(argv[0]):
        raise UsageError(f"{argv[0]}: a command comes first: python {name} COMMAND [--flags], COMMAND one of {listing}")
    close = difflib.get_close_matches(command, list(commands), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"unknown command {argv[0]!r} for {name}: {hint}commands: {listing}")


def show_help(component: Any, path: list[str], name: str, *, deprecated: Collection[str] = ()) -> None:
    """Print the help of ``component`` (or of its command ``path``) on stderr, then exit 0.

    fire renders it (each flag with its docstring line); :func:`help_text`
    spells the flags as the docs do. A terminal gets it through a pager, as fire pages it.
    """
    from fire.console import console_io  # fire only for help (lazy, like the commands' own imports)

    console_io.More(help_text(component, path, name, deprecated=deprecated), out=sys.stderr)
    raise SystemExit(0)


_FIRE_FLAG_LINE = re.compile(r"^( {4})(?:-\w, )?--(\w+)(?==)", re.MULTILINE)


def help_text(component: Any, path: list[str], name: str, *, deprecated: Collection[str] = ()) -> str:
    """fire's help text of ``component`` or its command ``path``, with the flags as the parser reads them.

    fire derives ``-x`` from first letters by its own rule (separately for
    keyword-only parameters, so ``compare`` showed ``-m`` for two flags) and
    prints parameter names with underscores; each flag line here shows
    :func:`long_flag` and the :func:`short_flags` letter the parser accepts.
    """
    from fire import helptext, trace  # lazy, as in show_help

    commands = component if isinstance(component, Mapping) else None
    view = {key: help_view(value) for key, value in commands.items()} if commands is not None else help_view(component)
    fire_trace = trace.FireTrace(view, name=name)
    target = view
    if commands is not None and path:
        target = view[path[0]]
        fire_trace.AddAccessedProperty(target, path[0], list(path), None, None)
    functions = commands.values() if commands is not None else [component]
    short = {flag: letter for letter, flag in short_flags(functions, deprecated).items()}

    def spell(match: re.Match) -> str:
        letter = short.get(match.group(2))
        return match.group(1) + (f"-{letter}, " if letter else "") + long_flag(match.group(2))

    return _FIRE_FLAG_LINE.sub(spell, helptext.HelpText(target, trace=fire_trace)) + "\n"


def help_view(function: Callable) -> Callable:
    """``function`` as fire's help should show it: each flag annotated with the type its value converts to.

    The CLI modules use ``from __future__ import annotations``, so their
    annotations are strings, which fire prints as ``Optional['str | None']``;
    the view's signature carries the real types (str, int, float, bool), which
    fire prints as ``str`` (``Optional[str]`` when the default is None).
    """
    if not callable(function) or isinstance(function, type):
        return function
    flags = signature_flags(function)
    signature = inspect.signature(function)
    params = [p.replace(annotation=flags[p.name].kind) if p.name in flags else p for p in signature.parameters.values()]

    @functools.wraps(function)
    def view(*args, **kwargs):
        return function(*args, **kwargs)

    view.__signature__ = signature.replace(parameters=params, return_annotation=inspect.Signature.empty)
    return view


def program_name(default: str) -> str:
    """How the user called the CLI: the installed command's name, or the script's (for messages)."""
    called = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return called if called.startswith("qk-spectra") else default


def run_cli(main: Callable[[], Any]) -> int:
    """Run a CLI; any error prints ``error: <one line>`` on stderr and gives exit status 1.

    Unexpected exceptions (bugs, or failures nobody foresaw) also get one line,
    with a hint to rerun with QK_SPECTRA_DEBUG=1, which prints their traceback.
    """
    debug = os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")
    try:
        main()
    except BuildError as exc:
        if exc.report and any(not line.startswith("FAILED") for line in exc.report.splitlines()):
            print(exc.report, file=sys.stderr)  # when every model failed, the error line alone says it all
        return _fail(exc, debug)
    except (QKSpectraError, ValueError) as exc:
        return _fail(exc, debug)
    except BrokenPipeError:  # the reader went away (``--list | head``): not an error; silence the final flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except SystemExit as exc:  # fire's --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception as exc:
        hint = "" if debug else f" (rerun with {DEBUG_ENV}=1 for the traceback)"
        return _fail(exc, debug, f"unexpected {type(exc).__name__}: ", hint)
    return 0


def _fail(exc: BaseException, debug: bool, prefix: str = "", suffix: str = "") -> int:
    """Print the exception as ``error: ...`` on one line (after its traceback when debugging); return 1."""
    if debug:
        traceback.print_exc()
    print(f"error: {prefix}{one_line(exc, limit=None)}{suffix}", file=sys.stderr)
    return 1
