"""Checking a manifest against its JSON Schema (runtime/schemas/), with no dependency.

The light runtime does not carry ``jsonschema``, so this validates the subset of JSON Schema
(2020-12) the manifest schema uses: type, const, enum, required, properties,
additionalProperties, propertyNames, pattern, minLength/maxLength, minimum,
minProperties/maxProperties.  A failure names the JSON path of the first value that breaks a rule.
"""

from __future__ import annotations

import json
import re
from importlib import resources

TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


class SchemaError(ValueError):
    def __init__(self, path: str, what: str):
        super().__init__(f"{path}: {what}")
        self.path, self.what = path, what


def schema(version: int) -> dict:
    name = f"bundle-manifest-v{version}.schema.json"
    rules = json.loads(resources.files("edgellm.runtime.schemas").joinpath(name).read_text())
    from edgellm.core.names import FORMAT_NAMES

    fmt = rules.get("properties", {}).get("choice", {}).get("properties", {}).get("format")
    if isinstance(fmt, dict) and "enum" in fmt:     # the registered formats', not only the built-in two
        fmt["enum"] = sorted(set(fmt["enum"]) | FORMAT_NAMES)
    return rules


def _is(value, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, TYPES[kind])


def _key(path: str, key: str) -> str:
    return f"{path}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"{path}[{key[:60]!r}]"


def validate(value, rules: dict, path: str = "$") -> None:
    """Raise SchemaError at the first rule ``value`` breaks."""
    if "const" in rules and (value != rules["const"] or type(value) is not type(rules["const"])):
        raise SchemaError(path, f"must be {rules['const']!r}")
    if "enum" in rules and value not in rules["enum"]:
        raise SchemaError(path, f"must be one of {', '.join(map(repr, rules['enum']))}")
    kinds = rules.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            raise SchemaError(path, f"must be {' or '.join(kinds)}")
    if isinstance(value, str):
        if len(value) < rules.get("minLength", 0) or len(value) > rules.get("maxLength", 1 << 62):
            raise SchemaError(path, f"length {len(value)} is outside {rules.get('minLength', 0)}..{rules.get('maxLength')}")
        if "pattern" in rules and not re.search(rules["pattern"], value):
            raise SchemaError(path, f"does not match {rules['pattern']}")
    if _is(value, "number") and "minimum" in rules and value < rules["minimum"]:
        raise SchemaError(path, f"must be at least {rules['minimum']}")
    if isinstance(value, dict):
        if not rules.get("minProperties", 0) <= len(value) <= rules.get("maxProperties", 1 << 62):
            raise SchemaError(path, f"has {len(value)} entries, outside {rules.get('minProperties', 0)}..{rules.get('maxProperties')}")
        for key in rules.get("required", ()):
            if key not in value:
                raise SchemaError(path, f"needs {key!r}")
        props = rules.get("properties", {})
        extra = rules.get("additionalProperties", True)
        for key, item in value.items():
            if "propertyNames" in rules:
                validate(key, {"type": "string", **rules["propertyNames"]}, _key(path, str(key)) + " (name)")
            if key in props:
                validate(item, props[key], _key(path, key))
            elif extra is False:
                raise SchemaError(_key(path, str(key)), "is not a field this version has")
            elif isinstance(extra, dict):
                validate(item, extra, _key(path, str(key)))
