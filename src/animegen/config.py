"""The one base of every stage's config dataclass: JSON round trip, unknown keys refused, config files."""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for ``@dataclass`` stage configs. ``from_dict`` refuses unknown keys (naming the valid ones) and
    rebuilds nested config dataclasses from plain dicts, so ``from_dict(to_dict(x)) == x``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(names))}")
        hints = typing.get_type_hints(cls)
        values = dict(values)
        for key, value in values.items():
            sub = hints.get(key)
            if isinstance(sub, type) and issubclass(sub, Config) and isinstance(value, dict):
                values[key] = sub.from_dict(value)
        return cls(**values)

    def save(self, path: str | Path) -> None:
        from .utils import write_json
        write_json(path, self.to_dict())


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
