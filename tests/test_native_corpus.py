"""GGUF files that aborted llama.cpp (tests/corpus/gguf, written by make_gguf_corpus.py) are
refused before llama.cpp sees them; and a native crash that still happens is one line."""

import subprocess
import sys
import textwrap

import pytest

from conftest import CORPUS, write_bundle
from edgellm.errors import EXIT_CRASHED, BadInput
from edgellm.runtime.gguf_check import read_header

CRASHERS = sorted((CORPUS / "gguf").glob("*.gguf"))
LOAD = textwrap.dedent("""
    import sys
    from llama_cpp import Llama
    m = Llama(model_path=sys.argv[1], n_ctx=64, verbose=False)
    m.create_completion(m.tokenize(b"t1 t2 \\xc3\\xa9"), max_tokens=2)
""")


def test_the_corpus_is_there_and_its_valid_base_runs():
    assert len(CRASHERS) >= 10
    read_header(CORPUS / "valid.gguf")
    r = subprocess.run([sys.executable, "-c", LOAD, str(CORPUS / "valid.gguf")], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]


@pytest.mark.parametrize("path", CRASHERS, ids=lambda p: p.stem)
def test_each_file_that_aborted_llama_cpp_is_refused_by_the_checker(path):
    with pytest.raises(BadInput) as e:
        read_header(path)
    assert str(path) in e.value.message and "\n" not in e.value.message


@pytest.mark.parametrize("path", CRASHERS[:4] + CRASHERS[-3:], ids=lambda p: p.stem)
def test_llama_cpp_on_its_own_does_not_run_them(path):
    # llama-cpp-python 0.3.36 aborts on every one (SIGABRT); run in a child so this cannot kill
    # the test runner.  This is why the checker's refusal matters.
    r = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, timeout=120,
                       env={"GGML_NO_BACKTRACE": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode != 0


@pytest.mark.parametrize("path", CRASHERS, ids=lambda p: p.stem)
def test_run_refuses_a_bundle_of_each_in_one_line(run_cli, tmp_path, path):
    b = write_bundle(tmp_path / "b", {"m.gguf": path.read_bytes()}, "m.gguf")
    r = run_cli("run", str(b), "-p", "t1", "--raw", "--max-tokens", "2")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "m.gguf: not a valid GGUF file" in r.stderr


CRASH = textwrap.dedent("""
    import os, sys
    from edgellm.cli.supervise import supervised
    def work():
        os.write(2, b"llama_model_loader: loaded meta data\\n")
        os.write(2, b"llama-vocab.cpp:2345: GGML_ASSERT(id_to_token.size() == token_to_id.size()) failed\\n")
        os.abort()
    sys.exit(supervised(work, "some-bundle"))
""")


def test_a_native_abort_is_one_line_naming_the_file_with_llama_cpps_message():
    r = subprocess.run([sys.executable, "-c", CRASH], capture_output=True, text=True, timeout=60)
    assert r.returncode == EXIT_CRASHED
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("edgellm: error: some-bundle: the runtime crashed (it aborted)")
    assert "GGML_ASSERT(id_to_token.size() == token_to_id.size()) failed" in r.stderr


REAL_CRASH = textwrap.dedent("""
    import sys
    from pathlib import Path
    from edgellm.cli.supervise import supervised
    from edgellm.runtime.llamacpp import LlamaCppModel
    def work():
        # the constructor, not LlamaCppModel.open: past edgellm's checker, straight to llama.cpp
        m = LlamaCppModel(Path(sys.argv[1]), n_ctx=64, threads=1)
        print("".join(m.stream("t1 t2", 4, 0.0, chat=False)))
        return 0
    sys.exit(supervised(work, sys.argv[1]))
""")


@pytest.mark.parametrize("name,said", [("rms-eps-nan", "GGML_ASSERT(eps >= 0.0f) failed"),
                                       ("duplicate-token-texts", "GGML_ASSERT"),
                                       ("sentencepiece-model-on-bpe-vocab", "unordered_map::at")])
def test_a_real_llama_cpp_abort_under_the_supervisor_keeps_its_message(name, said):
    path = CORPUS / "gguf" / f"{name}.gguf"
    r = subprocess.run([sys.executable, "-c", REAL_CRASH, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_CRASHED, r.stderr
    assert r.stderr.count("\n") == 1 and f"{path}: the runtime crashed (it aborted)" in r.stderr
    assert said in r.stderr
