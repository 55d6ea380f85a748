"""The format registry: every build format registers here (``@register``), and everything that
differs between formats is asked of its entry: the CLI's choices, a build choice's validation, the
manifest's format, the device profiles' runtimes, the exporter, the runtime backend, packaging.

Light (no torch: the runtime and the planner run on the device) and low: it imports
only the ground floor and the runtimes' rates, so ``runtime/`` and ``plan/`` both stand on it.
"""

from __future__ import annotations

from edgellm.core.names import FORMAT_NAMES, RUNTIME_NAMES
from edgellm.formats.runtimes import RUNTIMES
from edgellm.models.families.shape import FORMAT_ENTRIES

FORMATS: dict[str, "BuildFormat"] = {}


def register(cls):
    """Class decorator: ``cls`` (a ``BuildFormat``) joins the registry under its ``key``.  The
    built-in formats below register this way, and so does a format defined anywhere else (a
    plugin, a test): the CLI's choices, the build choice's validation, the manifest's format, the
    device profiles' runtimes, the exporter, the runtime backend and the app packaging all read
    the registry."""
    entry = cls()
    if entry.key in FORMATS and type(FORMATS[entry.key]) is not cls:
        raise ValueError(f"a format {entry.key!r} is registered already")
    FORMATS[entry.key] = entry
    FORMAT_ENTRIES[entry.key] = entry

    if entry.runtime_model is not None:
        RUNTIMES.setdefault(entry.runtime, entry.runtime_model)
    if entry.runtime not in RUNTIMES:
        del FORMATS[entry.key]
        FORMAT_ENTRIES.pop(entry.key, None)
        raise ValueError(f"format {entry.key!r}: its runtime {entry.runtime!r} has no rates (give runtime_model)")
    RUNTIME_NAMES.add(entry.runtime)
    FORMAT_NAMES.add(str(entry.format))
    return cls


def unregister(key: str) -> None:
    """Take a format out of the registry again (a test's own format, when the test is done)."""
    FORMATS.pop(key, None)
    FORMAT_ENTRIES.pop(key, None)


def resolved(spec):
    """An exporter or backend given as an object, or as "module:attr" imported only now (the
    exporters need the host toolchain, which the device does not have)."""
    if not isinstance(spec, str):
        return spec
    import importlib

    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


def format_for(choice) -> "BuildFormat":
    return entry(choice.format, choice.target)


def entry(fmt: str, target: str = "cpu") -> "BuildFormat":
    """The registry's entry for format name ``fmt`` and ``target``; ValueError when none."""
    for f in FORMATS.values():
        if f.format == fmt and f.target == target:
            return f
    raise ValueError(f"no format {fmt} for target {target} (formats: {', '.join(names())})")


def names() -> list[str]:
    """The format names a user can ask for (``--format``): the registry's, in its order."""
    return list(dict.fromkeys(str(f.format) for f in FORMATS.values()))


def expected_quality(choice, model):
    """The quality the build's format expects of it on ``model`` (``formats/quality.py``'s model)."""
    return format_for(choice).quality(model, choice)


def by_suffix(suffix: str) -> "BuildFormat | None":
    """The CPU format whose bare files end in ``suffix`` (``eval model.gguf``)."""
    return next((f for f in FORMATS.values() if f.suffix == suffix and f.target == "cpu"), None)


def formats_of(wanted: tuple[str, ...] | None) -> "list[BuildFormat]":
    """The registry entries of the user's ``--format`` names (gguf, onnx: onnx includes the NPU
    build); None: every registered format."""
    return [f for f in FORMATS.values() if wanted is None or f.format in wanted]


def quant_names() -> dict[str, list[str]]:
    """Each format name's weight types, for ``--quant`` (the CPU builds': the NPU's are among them)."""
    out: dict[str, list[str]] = {}
    for f in FORMATS.values():
        out.setdefault(str(f.format), [])
        out[str(f.format)] += [str(q) for q in f.quants if str(q) not in out[str(f.format)]]
    return out
