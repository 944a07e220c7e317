"""Read pymail.toml into a `Config`, turning every problem into one line.

The message of a `ConfigError` names the file, the dotted key and the problem, e.g.
`pymail.toml: limits.message_size: invalid size 'lots'`, so an operator can fix it from
the journal without reading a traceback.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pymail.config.schema import Config


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line for the operator."""


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: required"
    msg = first["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return f"{key}: {msg}"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load `path`, or `$PYMAIL_CONFIG`, or the embedded default when neither is set."""
    if path is None:
        path = os.environ.get("PYMAIL_CONFIG") or None
    if path is None:
        try:
            return Config()
        except ValidationError as e:  # e.g. a bad $PYMAIL_DATA
            raise ConfigError(f"embedded default: {_describe(e)}") from None
    where = Path(path)
    try:
        text = where.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{where}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: TOML syntax error: {e}") from None
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{where}: {_describe(e)}") from None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def config_as_toml(config: Config) -> str:
    """The effective settings as TOML text (what `pymail check-config` prints)."""
    lines: list[str] = []

    def section(model: BaseModel, prefix: str) -> None:
        scalars = []
        nested = []
        for name in type(model).model_fields:
            value = getattr(model, name)
            (nested if isinstance(value, BaseModel) else scalars).append((name, value))
        if scalars:
            if prefix:
                lines.append(f"[{prefix}]")
            for name, value in scalars:
                if value is None:
                    lines.append(f"# {name} is unset")
                else:
                    lines.append(f"{name} = {_toml_value(value)}")
            lines.append("")
        for name, value in nested:
            section(value, f"{prefix}.{name}" if prefix else name)

    section(config, "")
    lines.append("# derived")
    lines.append(f"# index = {config.index_url}")
    lines.append(f"# blobs = {config.blobs_url}")
    return "\n".join(lines) + "\n"
