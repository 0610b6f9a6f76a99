"""The one schema of every stage's options: ``Config`` dataclasses whose fields carry their help and allowed values.

Each option is written once, as a field: ``name: type = field(default=..., metadata=opt("help", choices=...))``.
From that one declaration come the CLI flags and their help (``animegen.cli``), the pipeline's parameter table
(``animegen.pipelines.pipeline.PARAMETERS``) and the parameter tables of the READMEs (:func:`markdown_table`).
``Config.from_dict`` converts values to the fields' types (:func:`coerce`: the one coercion path, used by the CLI,
config files and the KFP components alike) and every construction runs the one validation hook, ``validate()``.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def opt(help: str, *, choices: tuple | None = None, noun: str | None = None, default_text: str | None = None,
        unset: Any = None, flag: str | None = None, metavar: str | None = None,
        parse: typing.Callable[[str], Any] | None = None) -> dict[str, Any]:
    """A field's metadata: one-line ``help``; ``choices``: the allowed values (checked on construction; ``noun``
    names the option in that error, default: the field name); ``default_text``: what the default is when the
    field's value (None) leaves it to the code (e.g. "128 dcgan, 64 stylegan");
    ``unset``: the value a KFP pipeline parameter passes for "the default" (KFP parameters cannot be None: 0, -1,
    ''), documented in the parameter tables; ``flag``/``metavar``/``parse``: CLI spelling of an option whose flag
    is not the field name (``parse`` turns one flag value into one item of a list or one entry of a dict)."""
    return {"help": help, "choices": choices, "noun": noun, "default_text": default_text, "unset": unset,
            "flag": flag, "metavar": metavar, "parse": parse}


@dataclass(frozen=True)
class Option:
    """One option of a Config, flattened (``name`` dotted for nested configs: ``rules.threshold``)."""

    name: str
    type: Any           # the field's type hint (``X | None`` kept)
    default: Any
    help: str
    choices: tuple | None = None
    noun: str | None = None
    default_text: str | None = None
    unset: Any = None
    flag: str | None = None
    metavar: str | None = None
    parse: Any = None

    @property
    def base(self) -> Any:
        """The type without ``| None``."""
        return _strip_none(self.type)

    @property
    def type_name(self) -> str:
        t = self.base
        return getattr(t, "__name__", None) if typing.get_origin(t) is None else str(t).replace("typing.", "")

    def is_unset(self, value: Any) -> bool:
        """Whether a pipeline parameter's ``value`` means "the default" for this option (its ``unset``: 0, '' or
        -1, where -1 stands for any negative number)."""
        if self.unset is None or isinstance(value, bool) or value is None:
            return False
        if self.unset == -1 and isinstance(value, (int, float)):
            return value < 0
        return type(value) in (int, float, str) and value == self.unset

    def explained(self) -> str:
        """The help with the allowed values (when the help does not name them all)."""
        text = self.help
        if self.choices and not all(str(c) in text for c in self.choices):
            text += f" ({' | '.join(map(str, self.choices))})"
        return text

    def describe(self) -> str:
        """The help with the allowed values and the default (the text of a CLI flag)."""
        text = self.explained()
        if "default" not in text:
            text += f" (default: {self.default_text or _show(self.default)})"
        return text


def _show(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value) if value else ("[]" if isinstance(value, list) else "{}")
    return "none" if value is None else str(value)


def _strip_none(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if len(args) == 1 else t
    return t


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def options(cls: type, prefix: str = "") -> list[Option]:
    """Every option of the Config dataclass ``cls``, nested configs flattened (their names dotted)."""
    hints = typing.get_type_hints(cls)
    out: list[Option] = []
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if isinstance(_strip_none(t), type) and issubclass(_strip_none(t), Config):
            out += options(_strip_none(t), prefix=f"{prefix}{f.name}.")
            continue
        meta = dict(f.metadata) or {"help": ""}
        out.append(Option(prefix + f.name, t, _default(f), **meta))
    return out


def option(cls: type, name: str) -> Option:
    """The option ``name`` (dotted for nested configs) of ``cls``."""
    for o in options(cls):
        if o.name == name:
            return o
    raise KeyError(f"{cls.__name__} has no option {name!r}")


# ------------------------------------------------------------------------------------------------ coercion
def coerce_value(hint: Any, value: Any, name: str, *, text: bool = False) -> Any:
    """``value`` as the type ``hint`` says, or ValueError naming ``name`` and the type expected.

    Numbers: int -> float, and float -> int where nothing is lost (KFP hands every number of a dict parameter over
    as a float: 3.0 -> 3; 3.5 for an int is refused); bools are not numbers; nested Configs from mappings.
    ``text=True`` (a command-line value): a string is parsed as the type (bool true/false/1/0/yes/no/on/off; list
    comma-separated or JSON; dict JSON); otherwise a string where a number, bool, list or dict is due is refused.
    ``str`` fields keep what they are given (their ``choices`` are checked on construction)."""
    if value is None:
        if hint is Any or type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"{name}: a value is required (got none)")
    t = _strip_none(hint)
    origin, args = typing.get_origin(t), typing.get_args(t)
    parse = text and isinstance(value, str)

    def bad(want: str) -> ValueError:
        return ValueError(f"{name}={value!r}: expected {want}")

    if isinstance(t, type) and issubclass(t, Config):
        if isinstance(value, t):
            return value
        if not isinstance(value, dict):
            raise bad(f"a mapping of {t.__name__} options")
        return t.from_dict(value)
    if t is bool:
        if parse and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        if not isinstance(value, bool):
            raise bad("bool (true or false)")
        return value
    if t in (int, float):
        if parse:
            try:
                value = float(value) if t is float or not value.strip().lstrip("+-").isdigit() else int(value)
            except ValueError:
                raise bad(t.__name__) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad(t.__name__)
        if t is float:
            return float(value)
        if isinstance(value, float) and not value.is_integer():
            raise bad("int (a whole number)")
        return int(value)
    if origin is list or t is list:
        if parse:
            value = json.loads(value) if value.lstrip().startswith("[") else [v.strip() for v in value.split(",")
                                                                               if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise bad("list")
        return [coerce_value(args[0] if args else Any, v, f"{name}[{i}]", text=text) for i, v in enumerate(value)]
    if origin is dict or t is dict:
        if parse:
            try:
                value = json.loads(value)
            except ValueError:
                raise bad("dict (a JSON object)") from None
        if not isinstance(value, dict):
            raise bad("dict")
        item = args[1] if len(args) == 2 else Any
        return {str(k): coerce_value(item, v, f"{name}.{k}", text=text) for k, v in value.items()}
    if t is str and isinstance(value, (dict, list)):
        raise bad("str")
    return value


def coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` converted to the types of ``cls``'s fields (:func:`coerce_value`); unknown keys refused."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(cls)
    return {k: coerce_value(hints[k], v, k) for k, v in values.items()}


# ------------------------------------------------------------------------------------------------ the base
class Config:
    """Mixin for ``@dataclass`` stage configs. Construction runs :meth:`validate` (which may normalise legacy
    spellings) and then checks each field's ``choices``; ``from_dict`` coerces plain values (:func:`coerce`: unknown
    keys refused, naming the valid ones; nested configs rebuilt), so ``from_dict(to_dict(x)) == x``."""

    def __post_init__(self) -> None:
        self.validate()
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"unknown {f.metadata.get('noun') or f.name} {value!r}: {f.name} must be one of "
                                 f"these, valid: {', '.join(map(str, choices))}")

    def validate(self) -> None:
        """The one validation hook: raise ValueError naming the option and the valid values. Runs on every
        construction (``Config.from_dict``, ``dataclasses.replace`` included)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        return cls(**coerce(cls, values))

    def save(self, path: str | Path) -> None:
        from animegen.utils import write_json

        write_json(path, self.to_dict())


# ------------------------------------------------------------------------------------------------ docs
def markdown_table(rows: list[tuple[str, str, Any, str]]) -> str:
    """A Markdown table of (name, type, default, help) rows (default ``dataclasses.MISSING``: required)."""
    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    def shown(default: Any) -> str:
        if default is dataclasses.MISSING:
            return "required"
        return f"`{cell(repr(default) if isinstance(default, str) else json.dumps(default))}`"

    lines = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{cell(n)}` | {cell(t)} | {shown(d)} | {cell(h)} |" for n, t, d, h in rows]
    return "\n".join(lines) + "\n"


def replace_generated(text: str, marker: str, content: str) -> str:
    """``text`` with the block between ``<!-- BEGIN marker -->`` and ``<!-- END marker -->`` set to ``content``."""
    begin, end = f"<!-- BEGIN {marker} -->", f"<!-- END {marker} -->"
    if begin not in text or end not in text:
        raise ValueError(f"no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{content}{end}{tail}"


# ------------------------------------------------------------------------------------------------ files
def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping of option values (keys with '-' or '_'; nested mappings kept as they are)."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        values = json.loads(text)
    else:
        values = _yaml_load(text) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in values.items()}


def _yaml_load(text: str) -> Any:
    """YAML with the 1.2 core schema's booleans: only true/false are booleans, so `amp: on` or `hair: no` stay
    the strings they look like (PyYAML's default, YAML 1.1, reads yes/no/on/off as booleans)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
                                      for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return yaml.load(text, Loader=Loader)
