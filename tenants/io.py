"""Reading and writing tenant sets: TOML (the config format) and JSON (the API format).

Both formats hold the same tables as `TenantSet.to_dicts()`: TOML as a
`[[tenants]]` array of tables, JSON as `{"tenants": [...]}`. Every read error,
syntax or content, is a ConfigError that names its source.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from typing import Any

import tomli_w

from tenants.errors import ConfigError, type_name
from tenants.model import TenantSet

# Bytes. A config file of 100,000 tenants with lists is a few MiB; this bound keeps a wrong
# path (/dev/zero, a disk image) from being read into memory before anything is checked.
MAX_CONFIG_BYTES = 8 * 1024 * 1024
_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")
_AT_END = "(at end of document)"


def parse_toml_document(text: str, source: str) -> dict[str, Any]:
    """TOML text to a dict; a syntax error becomes a ConfigError quoting the offending line."""
    try:
        return tomllib.loads(text)
    except RecursionError:  # tomllib recurses per nesting level of arrays and inline tables
        raise ConfigError("TOML nested too deeply (arrays or inline tables inside each other)",
                          source=source) from None
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is None:
            if message.endswith(_AT_END):
                reason = message[:-len(_AT_END)].strip()
                raise ConfigError(f"line {len(text.splitlines())}, at end of file: TOML syntax error: {reason} "
                                  f"(is a bracket or a quote left open?)", source=source) from None
            raise ConfigError(f"TOML syntax error: {message}", source=source) from None
        line_number, column = int(position.group(1)), int(position.group(2))
        reason = message[:position.start()].strip()
        lines = text.splitlines()
        quoted = ""
        if 1 <= line_number <= len(lines):
            quoted = f"\n    {lines[line_number - 1]}\n    {' ' * (column - 1)}^"
        raise ConfigError(f"line {line_number}, column {column}: TOML syntax error: {reason}{quoted}",
                          source=source) from None
    except ValueError as exc:  # an integer of thousands of digits: Python refuses to convert it
        raise ConfigError(f"TOML value out of range: {exc}", source=source) from None


def read_text(path: str | os.PathLike[str]) -> str:
    """A config file's text; an unreadable file is a ConfigError, not a traceback."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB: not a config file",
                              source=os.fspath(path))
        return data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=os.fspath(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=os.fspath(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=os.fspath(path)) from None


def tenant_set_from_document(document: dict[str, Any], source: str, required: bool = True) -> TenantSet:
    """The TenantSet of a parsed document's `tenants` array; other top-level keys are not looked at.

    Ignoring them lets the same reader take a tenants-only file or the whole
    appliance config. Without a `tenants` key: an empty set, or an error when `required`.
    """
    if "tenants" not in document:
        if required:
            raise ConfigError("no [[tenants]] tables found", source=source)
        return TenantSet()
    try:
        return TenantSet.from_dicts(document["tenants"])
    except ConfigError as exc:
        raise exc.with_source(source) from None


def loads_toml(text: str, source: str = "<string>") -> TenantSet:
    """A TenantSet from TOML text whose top level has `[[tenants]]`."""
    return tenant_set_from_document(parse_toml_document(text, source), source)


def load_toml(path: str | os.PathLike[str]) -> TenantSet:
    """A TenantSet from a TOML file whose top level has `[[tenants]]`."""
    return loads_toml(read_text(path), source=os.fspath(path))


def dumps_toml(tenant_set: TenantSet) -> str:
    """TOML text that `loads_toml` reads back to an equal TenantSet."""
    return tomli_w.dumps({"tenants": tenant_set.to_dicts()})


def to_json(tenant_set: TenantSet, indent: int | None = 2) -> str:
    """`{"tenants": [...]}` with the same tables as the TOML form."""
    return json.dumps({"tenants": tenant_set.to_dicts()}, indent=indent)


def from_json(text: str | bytes, source: str = "<json>") -> TenantSet:
    """A TenantSet from `{"tenants": [...]}` (or a bare array of tenant objects)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"line {exc.lineno}, column {exc.colno}: JSON syntax error: {exc.msg}",
                          source=source) from None
    except RecursionError:
        raise ConfigError("JSON nested too deeply", source=source) from None
    except ValueError as exc:  # an integer of thousands of digits
        raise ConfigError(f"JSON value out of range: {exc}", source=source) from None
    if isinstance(document, list):
        document = {"tenants": document}
    if not isinstance(document, dict):
        raise ConfigError(f"expected an object with a \"tenants\" array, got {type_name(document)}", source=source)
    return tenant_set_from_document(document, source)
