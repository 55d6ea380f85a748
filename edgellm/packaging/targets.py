"""Where a bundle's files go in an app, one small class per platform (``TARGETS``).

Each target takes the package's files (the bundle's, with a GGUF split when asked) and says
where each goes, what the store's size rules allow (an error names the limit and the size), and
what the integration note tells the developer, with the exact file names of this package.

Those names come from the bundle, which may come from a stranger, and land in Kotlin, Swift,
Gradle, shell and Markdown: every one passes ``safe_name`` (a strict character set) first, so no
quote, ``$``/``${…}`` template, backslash, backtick, newline or look-alike letter reaches them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from edgellm.errors import BadInput
from edgellm.packaging import limits
from edgellm.units import fmt_bytes


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_NAME = 128


def safe_name(value, field: str, limit: int = MAX_NAME, shown=None) -> str:
    """``value`` if it may be written as is into generated code, scripts, paths and URLs (ASCII
    letters, digits, '.', '_', '-'; a letter or digit first, so never '..', '-x' or hidden; at most
    ``limit`` characters); else BadInput naming ``field`` with the value escaped (ascii(), so a
    look-alike letter or a newline shows) and trimmed, on one line.  Refusing rather than escaping
    per language: one rule that holds in every language the package writes."""
    if isinstance(value, str) and len(value) <= limit and SAFE_NAME.fullmatch(value):
        return value
    text = ascii(value if shown is None else shown)
    text = text if len(text) <= 80 else text[:76] + "..."
    raise BadInput(f"{field} {text} is not a name edgellm writes into app code: letters, digits, '.', '_', '-', "
                   f"starting with a letter or digit, at most {limit} characters; rename it (export again)")


@dataclass(frozen=True)
class PackFile:
    name: str            # file name in the bundle (or a split part)
    source: Path
    bytes: int
    sha256: str

    def __post_init__(self):
        safe_name(self.name, "file name", 255)   # every packaged name, whatever made it (a split part too)


@dataclass
class Layout:
    placed: list[tuple[str, PackFile]] = field(default_factory=list)   # (path in the package, file)
    extra: dict[str, str] = field(default_factory=dict)                 # path -> text
    note: list[str] = field(default_factory=list)
    delivery: str = ""
    archive: str | None = None         # linux: the tarball's folder, packed at the end


def _ident(text: str) -> str:
    s = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "model"
    return safe_name(s if s[0].isalpha() else f"m_{s}", "model.name", MAX_NAME + 2, shown=text)


def store_bytes(n: int) -> str:
    """Sizes as the stores state them: decimal units (1.5 GB = 1.5 x 10^9 bytes)."""
    for unit, div in (("GB", limits.GB), ("MB", limits.MB)):
        if n >= div:
            return f"{n / div:.3g} {unit}"
    return f"{n:,} B"


def _over(what: str, size: int, limit: int, source: str, advice: str) -> BadInput:
    return BadInput(f"{what}: the model is {store_bytes(size)}, over the {store_bytes(limit)} limit ({source}); {advice}")


class Target:
    name = ""
    deliveries: tuple[str, ...] = ()

    def layout(self, files: list[PackFile], model: str, artifact: str, fmt: str, delivery: str,
               peak_memory: int | None, ram: int | None, device: str) -> Layout:
        raise NotImplementedError


def _runtime_lines(fmt: str, folder: str, artifact: str, files: list[PackFile], lang: str) -> list[str]:
    """How the app loads it, with this package's file names (``lang``: kotlin or swift): the
    format's own lines (``BuildFormat.app_runtime_lines``)."""
    from edgellm.formats import entry

    suffix = Path(artifact).suffix
    first = next((f.name for f in files if suffix and f.name.endswith(suffix)), artifact)
    return entry(fmt).app_runtime_lines(folder, first, lang)


class Android(Target):
    name = "android"
    deliveries = ("auto", "base", "install-time", "fast-follow", "on-demand", "download")

    def layout(self, files, model, artifact, fmt, delivery, peak_memory, ram, device):
        total = sum(f.bytes for f in files)
        ident = _ident(model)
        if delivery == "auto":
            delivery = "base" if total <= limits.PLAY_BASE_MODULE else "install-time"
        lay = Layout(delivery=delivery)
        if delivery == "download":
            for f in files:
                lay.placed.append((f"download/{f.name}", f))
            lay.note += [f"# {model} for Android: downloaded on first launch", "",
                         "Upload the files of `download/` to your host; `index.json` lists their sizes, "
                         "sha256 and URLs. On first launch, download each into `context.filesDir/edgellm/"
                         f"{ident}/`, check its sha256, then load from there."]
            return lay
        if delivery == "base":
            if total > limits.PLAY_BASE_MODULE:
                raise _over("android base module", total, limits.PLAY_BASE_MODULE, "Google Play's base module limit",
                            "use --delivery install-time (an asset pack) or download")
            root = f"app/src/main/assets/edgellm/{ident}"
            for f in files:
                lay.placed.append((f"{root}/{f.name}", f))
            where = ("Copy `app/src/main/assets/edgellm/` into your app module's `src/main/assets/`. Assets "
                     "are not files on disk: on first launch copy them to `context.filesDir` "
                     f"(`edgellm/{ident}/`) and load from there. Keep them uncompressed in the APK: "
                     "`androidResources { noCompress += listOf(\"gguf\", \"onnx\", \"data\") }`.")
        else:
            packs = self._packs(files, delivery, model)
            for i, pack in enumerate(packs):
                pname = f"{ident}_model" + (f"_{i + 1}" if len(packs) > 1 else "")
                lay.extra[f"{pname}/build.gradle.kts"] = (
                    "plugins { id(\"com.android.asset-pack\") }\n\nassetPack {\n"
                    f"    packName.set(\"{pname}\")\n    dynamicDelivery {{\n"
                    f"        deliveryType.set(\"{delivery}\")\n    }}\n}}\n")
                for f in pack:
                    lay.placed.append((f"{pname}/src/main/assets/edgellm/{ident}/{f.name}", f))
            names = ", ".join(f"\":{ident}_model{'_' + str(i + 1) if len(packs) > 1 else ''}\"" for i in range(len(packs)))
            where = (f"Add the asset pack module(s) to `settings.gradle.kts` (`include({names})`) and to your app's "
                     f"`android {{ assetPacks += listOf({names}) }}`. "
                     + ("Install-time packs are installed with the app: read them with `context.assets` and copy "
                        f"to `context.filesDir` (`edgellm/{ident}/`) on first launch."
                        if delivery == "install-time" else
                        "Fetch the pack with the Play Asset Delivery API (`AssetPackManager.fetch`), then load from "
                        f"`getPackLocation(pack).assetsPath() + \"/edgellm/{ident}/\"`."))
        limit = limits.PLAY_BASE_MODULE if delivery == "base" else limits.PLAY_ASSET_PACK
        lay.note += [f"# {model} for Android ({delivery})", "", where, "",
                     *_runtime_lines(fmt, f"<filesDir>/edgellm/{ident}", artifact, files, "kotlin"), "",
                     f"Size: {store_bytes(total)} in {len(files)} files; Google Play's limit for this delivery is "
                     f"{store_bytes(limit)} per {'base module' if delivery == 'base' else 'asset pack'} "
                     "(https://developer.android.com/guide/playcore/asset-delivery)."]
        return lay

    def _packs(self, files, delivery, model) -> list[list[PackFile]]:
        """Files grouped into asset packs of at most the per-pack limit (split parts spread)."""
        total = sum(f.bytes for f in files)
        cap = limits.PLAY_INSTALL_TIME_TOTAL if delivery == "install-time" else limits.PLAY_DEFERRED_TOTAL
        if total > cap:
            raise _over(f"android {delivery} asset packs", total, cap, f"Google Play's total for {delivery} packs",
                        "use --delivery download (first-launch download from your host)")
        packs: list[list[PackFile]] = [[]]
        for f in sorted(files, key=lambda f: -f.bytes):
            if f.bytes > limits.PLAY_ASSET_PACK:
                raise _over(f"android asset pack ({f.name})", f.bytes, limits.PLAY_ASSET_PACK,
                            "Google Play's per-pack limit", "pass --split 1GB to spread the GGUF over several packs, "
                            "or --delivery download")
            for p in packs:
                if sum(x.bytes for x in p) + f.bytes <= limits.PLAY_ASSET_PACK:
                    p.append(f)
                    break
            else:
                packs.append([f])
        return packs


class Ios(Target):
    name = "ios"
    deliveries = ("auto", "bundled", "download")

    def layout(self, files, model, artifact, fmt, delivery, peak_memory, ram, device):
        total = sum(f.bytes for f in files)
        ident = _ident(model)
        if delivery == "auto":
            delivery = "bundled" if total <= limits.APP_STORE_APP else "download"
        if delivery == "bundled" and total > limits.APP_STORE_APP:
            raise _over("ios app", total, limits.APP_STORE_APP, "the App Store's uncompressed app size limit",
                        "use --delivery download")
        lay = Layout(delivery=delivery)
        sub = "download" if delivery == "download" else f"ios/{ident}"
        for f in files:
            lay.placed.append((f"{sub}/{f.name}", f))
        if delivery == "bundled":
            where = (f"Drag `ios/{ident}` into your Xcode target as a folder reference (blue folder, \"Create folder "
                     f"references\"), so it ships as `Bundle.main.resourcePath + \"/{ident}\"`.")
        else:
            where = ("Upload the files of `download/` to your host (`index.json` lists sizes, sha256 and URLs); on "
                     f"first launch download them into Application Support/`{ident}/`, check each sha256, load from there.")
        lay.note += [f"# {model} for iOS ({delivery})", "", where, "",
                     *_runtime_lines(fmt, f"<resources>/{ident}", artifact, files, "swift"), "",
                     f"Size: {store_bytes(total)} (App Store limit {store_bytes(limits.APP_STORE_APP)} uncompressed)."]
        if not any(k in device.lower() for k in ("iphone", "ipad")):
            lay.note += ["", f"Memory: this bundle was planned for {device}, not an iPhone or iPad, so its memory "
                         "was not checked against iOS's limit; export for the phone (e.g. --device "
                         "iphone-15-pro-8gb) to have it checked."]
        elif peak_memory and ram:
            allowed = int(ram * limits.IOS_DEFAULT_FRACTION)
            if peak_memory > allowed:
                lay.note += ["", f"Memory: the plan's peak is {fmt_bytes(peak_memory)} on {device}, above the "
                             f"{fmt_bytes(allowed)} iOS lets an app use by default there "
                             f"({limits.IOS_DEFAULT_FRACTION:.1%} of {fmt_bytes(ram)}, as measured: see "
                             "edgellm/packaging/limits.py). Add the `" + limits.IOS_ENTITLEMENT + "` entitlement "
                             "(Signing & Capabilities > Increased Memory Limit) and check "
                             "`os_proc_available_memory()` before loading."]
            else:
                lay.note += ["", f"Memory: the plan's peak is {fmt_bytes(peak_memory)} on {device}, within the "
                             f"{fmt_bytes(allowed)} iOS allows an app by default there; no entitlement needed."]
        return lay


class Linux(Target):
    name = "linux"
    deliveries = ("auto",)

    def layout(self, files, model, artifact, fmt, delivery, peak_memory, ram, device):
        ident = _ident(model)
        lay = Layout(delivery="tarball", archive=ident)
        for f in files:
            lay.placed.append((f"{ident}/bundle/{f.name}", f))
        lay.extra[f"{ident}/run.sh"] = (
            "#!/bin/sh\n# Run this model with edgellm's light runtime (install: pip install edgellm).\n"
            "set -e\nhere=$(cd \"$(dirname \"$0\")\" && pwd)\n"
            "command -v edgellm >/dev/null || { echo \"run.sh: edgellm is not installed: pip install edgellm\" >&2; exit 127; }\n"
            "exec edgellm run \"$here/bundle\" \"$@\"\n")
        lay.extra[f"{ident}/README.md"] = (
            f"# {model}\n\nInstall the light runtime (numpy, llama-cpp-python, onnxruntime; no torch):\n\n"
            "    pip install edgellm\n\nThen:\n\n    ./run.sh -p \"Hello\"\n    edgellm profile bundle\n    "
            "edgellm verify bundle\n")
        lay.note += [f"# {model} for Linux", "", f"`{ident}.tar.gz` holds `{ident}/bundle/` (the checked bundle), "
                     "`run.sh` and a README. On the device: `pip install edgellm`, unpack, `./run.sh -p \"Hello\"`."]
        return lay


TARGETS = {t.name: t for t in (Android(), Ios(), Linux())}
