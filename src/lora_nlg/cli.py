"""Typed dataclass configuration from a YAML file and command-line flags.

Each program has one dataclass; its fields are the flags (``--field_name``), the docstring under
each field is the flag's help. ``--config FILE.yaml`` fills fields first, flags given on the
command line override it. An unknown key in the file or an unknown flag is an error. The resolved
configuration is what gets saved next to outputs and inside checkpoints.

A flag of an optional field takes ``none`` (or ``null``, or an empty string) for None, which clears
a value the ``--config`` file set (``--init_checkpoint none``: no backbone file, a random one).
A field made with ``positional(...)`` is a positional argument instead; ``aliased(...)`` gives a
field more option strings (older spellings such as ``--data-dir``), each meaning the field itself
or, given as ``(alias, value)``, setting it to a fixed value (``("-p", "python")``).
"""

import argparse
import ast
import dataclasses
import inspect
import json
import os
import re
import sys
import textwrap
import typing
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import yaml

from lora_nlg.errors import FormatError

T = TypeVar("T")
DEBUG_ENV = "LORA_NLG_DEBUG"
PROG_ENV = "LORA_NLG_PROG"  # a script that wraps a program names itself in its messages and --help
NONE_WORDS = ("none", "null", "")


class _Omitted:
    """The value of a positional argument that was not given (dropped before the dataclass is built)."""

    def __repr__(self):
        return "omitted"


_OMITTED = _Omitted()


def positional(nargs: Optional[str] = None, aliases=(), **field_kwargs) -> Any:
    """A dataclass field read from a positional argument (``nargs`` as argparse's); ``aliases``:
    option strings that give it too."""
    return dataclasses.field(**field_kwargs, metadata={"positional": True, "nargs": nargs, "aliases": aliases})


def require(cfg, *names: str) -> None:
    """A ValueError naming the flags among ``names`` that ``cfg`` leaves empty."""
    missing = [f"--{name}" for name in names if getattr(cfg, name) in (None, "", [], ())]
    if missing:
        raise ValueError(" and ".join(missing) + (" is" if len(missing) == 1 else " are") + " required")


def aliased(*aliases, **field_kwargs) -> Any:
    """A dataclass field with more option strings: ``"--old-name"`` or ``("--flag", fixed_value)``."""
    return dataclasses.field(**field_kwargs, metadata={"aliases": aliases})


def field_docs(cls) -> Dict[str, str]:
    """Attribute docstrings: the string literal right under each field of a dataclass."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _str2bool(s: str) -> bool:
    v = s.lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _is_optional(tp) -> bool:
    return typing.get_origin(tp) is typing.Union and type(None) in typing.get_args(tp)


def _or_none(convert):
    """A flag value converter that also takes none, null or '' for None (clearing a --config value)."""

    def parse(text):
        return None if text.strip().lower() in NONE_WORDS else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp, help_: str):
    optional = _is_optional(tp)
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    kw: Dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_)
    if tp is bool:
        # `--flag` alone means true (upstream's store_true flags); `--flag false` also works.
        kw.update(nargs="?", const=True, type=_str2bool, metavar="BOOL")
    elif origin is typing.Literal:
        choices = typing.get_args(tp)
        kw.update(type=type(choices[0]), choices=choices)
    elif origin in (list, tuple, typing.List, typing.Tuple, Sequence):
        item = (typing.get_args(tp) or (str,))[0]
        if typing.get_origin(item) is typing.Literal:
            kw.update(nargs="*", type=type(typing.get_args(item)[0]), choices=typing.get_args(item))
        else:
            kw.update(nargs="*", type=item)
    else:
        kw.update(type=tp)
    if optional and tp is not bool and kw.get("nargs") != "*":
        kw["type"] = _or_none(kw["type"])
        if "choices" in kw:
            kw["choices"] = (*kw["choices"], None)
    if f.metadata.get("positional"):
        if f.metadata["nargs"] is not None:
            kw["nargs"] = f.metadata["nargs"]
        if kw.get("nargs") in ("?", "*") and "choices" in kw:
            kw["default"] = _OMITTED  # argparse checks a SUPPRESS default of a positional against its choices
        parser.add_argument(f.name, metavar=f.name.upper(), **kw)
        options = [a for a in f.metadata.get("aliases", ()) if isinstance(a, str)]
        if options:  # the same values as an option too (an older spelling)
            parser.add_argument(
                *options, dest=f.name, **{**kw, "default": argparse.SUPPRESS, "help": f"the same as {f.name.upper()}"}
            )
        return
    names = [f"--{f.name}"] + [a for a in f.metadata.get("aliases", ()) if isinstance(a, str)]
    parser.add_argument(*names, dest=f.name, **kw)
    for alias in f.metadata.get("aliases", ()):
        if not isinstance(alias, str):
            flag, value = alias
            parser.add_argument(
                flag,
                dest=f.name,
                action="store_const",
                const=value,
                default=argparse.SUPPRESS,
                help=f"the same as --{f.name} {value}",
            )


def build_parser(cls, prog: Optional[str] = None, description: Optional[str] = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=os.environ.get(PROG_ENV) or prog,
        description=description or (cls.__doc__ or "").strip(),
        allow_abbrev=False,
    )  # a typo must not pick a flag silently
    parser.add_argument(
        "--config",
        default=None,
        help="YAML file with any of the fields below (base: FILE starts from another); flags override it",
    )
    parser.add_argument("--debug", action="store_true", help=f"show a traceback for errors too (or {DEBUG_ENV}=1)")
    hints = typing.get_type_hints(cls, include_extras=False)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        doc = docs.get(f.name, "")
        _add_field(parser, f, hints[f.name], doc if "(default:" in doc else f"{doc} (default: {default!r})".strip())
    return parser


def _coerce(value, tp, where: str):
    if _is_optional(tp) and isinstance(value, str) and value.strip().lower() in NONE_WORDS:
        return None
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if value is None:
        return None
    if origin in (list, tuple, typing.List, typing.Tuple, Sequence):
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = (typing.get_args(tp) or (str,))[0]
        return [_coerce(v, item, where) for v in value]
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        try:
            return _str2bool(str(value))
        except argparse.ArgumentTypeError as e:
            raise ValueError(f"{where}: {e}") from None
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


BASE_KEY = "base"  # a config file may start from another: `base: e2e.yaml` (relative to its own folder)


def load_config_file(cls, path: str, _seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """A config file's values; its ``base`` file's first (its own keys win over them)."""
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
            raise FormatError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
        except UnicodeDecodeError as e:
            raise FormatError(f"{path}: not UTF-8 text (byte {e.start + 1})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of field: value at the top level")
    values: Dict[str, Any] = {}
    base = data.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ValueError(f"{path}: key {BASE_KEY!r} must name a config file, got {base!r}")
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), base))
        if os.path.abspath(base_path) in _seen + (os.path.abspath(path),):
            raise ValueError(f"{path}: key {BASE_KEY!r}: {base_path} starts from this file again")
        values = load_config_file(cls, base_path, _seen + (os.path.abspath(path),))
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    hints = typing.get_type_hints(cls)
    values.update({k: _coerce(v, hints[k], f"{path}: key {k!r}") for k, v in data.items()})
    return values


def parse_config(
    cls: Type[T],
    argv: Optional[List[str]] = None,
    prog: Optional[str] = None,
    defaults: Optional[Dict[str, Any]] = None,
) -> T:
    """Parse ``argv`` into ``cls``: dataclass defaults < ``defaults`` < ``--config`` file < flags."""
    parser = build_parser(cls, prog=prog)
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    values: Dict[str, Any] = dict(defaults or {})
    config_path = vars(ns).pop("config", None)
    vars(ns).pop("debug", None)
    if config_path:
        values.update(load_config_file(cls, config_path))
    values.update({k: v for k, v in vars(ns).items() if v is not _OMITTED and v != [_OMITTED]})
    hints = typing.get_type_hints(cls)
    values = {
        k: (tuple(v) if isinstance(v, list) and typing.get_origin(_unwrap_optional(hints[k])) is tuple else v)
        for k, v in values.items()
    }
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        parser.error(str(e))


def config_to_dict(cfg) -> Dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def save_config(cfg, path: str) -> None:
    """Write the resolved configuration as YAML (loadable again with ``--config``)."""
    from lora_nlg.atomic import atomic_write

    with atomic_write(path) as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)


def run_program(
    prog: str, body: Callable[[List[str]], int], argv: Optional[List[str]] = None, quiet: bool = False, code: int = 2
) -> int:
    """``body(argv)``, with every error a user can cause (a bad file, a missing one, a folder where a
    file belongs, a bad value: ``ValueError`` and ``OSError``) reported as one line
    ``prog: error: ...`` (not with ``quiet``) and exit status ``code``; ``--debug`` or ``LORA_NLG_DEBUG=1``
    re-raises instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.environ.get(PROG_ENV) or prog
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return body([a for a in argv if a != "--debug"])
    except (ValueError, OSError) as e:
        if debug:
            raise
        if not quiet:
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def one_line(e: BaseException) -> str:
    """An error as one line: an OSError's file and reason, anything else its message, line breaks
    folded."""
    if isinstance(e, OSError) and e.strerror:
        name = e.filename2 if isinstance(e, (FileExistsError, IsADirectoryError)) and e.filename2 else e.filename
        text = f"{name}: {e.strerror}" if name else e.strerror
    else:
        text = str(e) or type(e).__name__
    return re.sub(r"\s*\n\s*", " ", text).strip()
