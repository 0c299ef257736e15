"""Typed YAML configs: one dataclass tree per stage, validated at load.

A stage declares its settings as nested ``@dataclass`` classes with defaults.
:func:`load_config` reads a YAML file, applies ``a.b=value`` overrides from the
command line and builds the dataclass tree, failing with :class:`ConfigError`
(one line, naming the key) on:

* unknown keys (with the closest valid key suggested: ``train.lrr`` ->
  ``did you mean 'train.lr'?``),
* values of the wrong type (``train.lr: expected float, got 'fast'``),
* values outside a ``Literal`` (``sde.schedule: 'cosin' is not one of ...``),
* a ``family`` that no option of a union of sections names (``model.family: 'x' is not one of
  'irsde', 'nafnet'``): a field typed ``SectionA | SectionB``, each with a ``family: Literal[...]``
  field, takes the section whose family the mapping names (the first option when it names none),
* range and file checks declared in field metadata with :func:`spec`
  (``minimum``, ``maximum``, ``must_exist``), or raised from a dataclass's own
  ``validate()`` method for checks that involve several fields (a ``ValueError`` it raises counts as
  a config error, so sections defined outside this package, e.g. ``data.synthetic.SynthesisConfig``,
  check themselves).

:func:`to_dict` gives the plain, YAML-safe dict that goes into run folders and
checkpoints; :func:`from_dict` rebuilds the dataclass from it, so a saved config
reloads unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "spec",
    "load_config",
    "from_dict",
    "to_dict",
    "save_config",
    "apply_overrides",
    "add_config_arguments",
    "config_from_args",
]


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message names the key."""


def spec(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    must_exist: bool = False,
    help: str = "",
) -> Any:
    """A dataclass field with declarative checks applied by :func:`load_config`.

    ``minimum``/``maximum`` bound numbers (and every element of a list of
    numbers); ``must_exist`` requires a non-empty string to name an existing
    file or folder (empty string / ``None`` means "not set").
    """
    metadata = {
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "must_exist": must_exist,
        "help": help,
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _family_options(tp: Any) -> list[type] | None:
    """The options of a union of config sections told apart by a ``family`` literal, else None."""
    if typing.get_origin(tp) not in (Union, types.UnionType):
        return None
    options = [a for a in typing.get_args(tp) if a is not type(None)]
    if not options or not all(dataclasses.is_dataclass(o) for o in options):
        return None
    for option in options:
        family = typing.get_type_hints(option).get("family")
        if typing.get_origin(family) is not Literal:
            return None
    return options


def _family_section(tp: Any, value: Any, key: str) -> type | None:
    """The section of a family union (see :func:`_family_options`) that the mapping ``value`` names."""
    options = _family_options(tp)
    if options is None or not isinstance(value, Mapping):
        return None
    names = {name: o for o in options for name in typing.get_args(typing.get_type_hints(o)["family"])}
    family = value.get("family", typing.get_args(typing.get_type_hints(options[0])["family"])[0])
    if family not in names:
        choices = ", ".join(repr(n) for n in names)
        hint = difflib.get_close_matches(str(family), list(names), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{key}.family: {family!r} is not one of {choices}{extra}")
    return names[family]


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert it (list->tuple, int->float)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        section = _family_section(tp, value, key)
        if section is not None:
            return _build(section, value, key)
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and typing.get_origin(options[0]) is Literal:
            return _coerce(value, options[0], key)  # an optional choice: name the choices, "did you mean"
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(a) for a in args)
        hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"{key}: {value!r} is not one of {choices}{extra}")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def _check_field(field: dataclasses.Field, value: Any, key: str) -> None:
    meta = field.metadata
    if not meta or value is None:
        return
    numbers = value if isinstance(value, (list, tuple)) else [value]
    for number in numbers:
        if not isinstance(number, (int, float)) or isinstance(number, bool):
            continue
        low, high = meta.get("minimum"), meta.get("maximum")
        if low is not None:
            if meta.get("exclusive_minimum") and not number > low:
                raise ConfigError(f"{key}: must be > {low}, got {number}")
            if not meta.get("exclusive_minimum") and number < low:
                raise ConfigError(f"{key}: must be >= {low}, got {number}")
        if high is not None and number > high:
            raise ConfigError(f"{key}: must be <= {high}, got {number}")
    if meta.get("must_exist") and isinstance(value, str) and value:
        if not Path(os.path.expanduser(value)).exists():
            raise ConfigError(f"{key}: file or folder not found: {value}")


def _optional_section(tp: Any) -> type | None:
    """The section of an optional one (``Section | None``), so its keys are checked too; else None."""
    options = [a for a in typing.get_args(tp) if a is not type(None)] if _is_optional(tp) else []
    return options[0] if len(options) == 1 and dataclasses.is_dataclass(options[0]) else None


def _check_keys(cls: type, data: Mapping[str, Any], prefix: str = "") -> None:
    """Fail on the first unknown key anywhere in the tree (before any value is checked)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for name, value in data.items():
        if name not in fields:
            full = f"{prefix}.{name}" if prefix else str(name)
            hint = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.5)
            where = f" in section '{prefix}'" if prefix else ""
            suggestion = f"; did you mean '{prefix + '.' if prefix else ''}{hint[0]}'?" if hint else ""
            valid = "" if hint else f" (valid keys{where}: {', '.join(fields)})"
            raise ConfigError(f"unknown config key '{full}'{suggestion}{valid}")
        full = f"{prefix}.{name}" if prefix else name
        section = (
            hints[name]
            if dataclasses.is_dataclass(hints[name])
            else _family_section(hints[name], value, full) or _optional_section(hints[name])
        )
        if section is not None and isinstance(value, Mapping):
            _check_keys(section, value, full)


def _build(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    if not prefix:
        _check_keys(cls, data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _coerce(data[name], hints[name], key)
        elif dataclasses.is_dataclass(hints[name]) and field.default_factory is dataclasses.MISSING:
            value = _build(hints[name], {}, key)
        elif _family_options(hints[name]) and field.default_factory is dataclasses.MISSING:
            value = _build(_family_options(hints[name])[0], {}, key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{key}'")
        else:
            continue
        _check_field(field, value, key)
        kwargs[name] = value
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # pragma: no cover - a programming error in a config class
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from err
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as err:  # a section's own one-line check (e.g. data.synthetic.SynthesisConfig)
            raise ConfigError(str(err)) from None
    return obj


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build and validate a config dataclass from a plain dict (e.g. one saved in a checkpoint)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of settings for {cls.__name__}, got {type(data).__name__}")
    return _build(cls, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The plain, YAML-safe dict of a config dataclass (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (reloads unchanged with :func:`load_config`)."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    Path(path).write_text(text)


# ----------------------------------------------------------------------------- reading YAML


class DuplicateKeyError(yaml.YAMLError):
    """A mapping in a YAML file gives the same key twice (YAML forbids it; PyYAML keeps the last)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys instead of silently keeping the last value."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML reports it below
                break
            if first is not None:
                raise DuplicateKeyError(f"duplicate key '{key}' (line {line}; first given on line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _line_of_offset(data: bytes, offset: int) -> int:
    """The 1-based line number of byte ``offset`` in ``data`` (for decoding errors)."""
    return data.count(b"\n", 0, offset) + 1


# ----------------------------------------------------------------------------- overrides


def _parse_value(text: str) -> Any:
    if not text.strip():
        return ""  # `key=` clears a value (use `key=null` for None)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (values parsed as YAML scalars/lists)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {key}: '{'.'.join(parts[: depth + 1])}' is not a section")
            node = child
        node[parts[-1]] = _parse_value(text)
    return data


def load_config(
    cls: type[T],
    path: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
) -> T:
    """Load ``path`` (YAML) into the dataclass ``cls``, applying dotted overrides.

    Raises :class:`ConfigError` (one line naming the file and key) on any problem.
    """
    data: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except OSError as err:
            raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            line = _line_of_offset(Path(path).read_bytes(), err.start)
            raise ConfigError(f"{path}: not UTF-8 text (line {line}: {err.reason})") from None
        try:
            loaded = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
        except DuplicateKeyError as err:
            raise ConfigError(f"{path}: {err}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"{path}: invalid YAML{where}") from None
        if loaded is None:
            raise ConfigError(
                f"{path}: the config file is empty (no settings); give a config with the settings to change, "
                "e.g. a copy of one in configs/"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return _build(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


# ----------------------------------------------------------------------------- command line


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """Add ``-c/--config PATH`` and trailing ``key.sub=value`` overrides to a parser."""
    parser.add_argument("-c", "--config", default=default, help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value", help="override config values, e.g. train.lr=1e-4"
    )


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Load the config named by parsed ``-c`` and overrides (see :func:`add_config_arguments`)."""
    return load_config(cls, args.config, args.overrides)
