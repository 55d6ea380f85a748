"""Chat templates are bounded as a whole: every operation, every path (issue 24, class 3).

Each template in ``tests/corpus/templates/`` is a way we could find to make one Jinja operation
run for minutes or build gigabytes (a power of a power, ``center(10**9)``, a format width, a value
doubled in a loop, lipsum...).  Each must be refused with one ``BadInput`` line within the README's
5 s, and the process that asked must not grow: the render runs in a child process with memory and
CPU limits, so even an operation no check foresaw is stopped.
"""

import resource
import time
from pathlib import Path

import pytest

from edgellm.errors import BadInput
from edgellm.runtime.tokenizer import MAX_RENDER_SECONDS, render_chat

CORPUS = Path(__file__).parent / "corpus" / "templates"
HOSTILE = sorted(CORPUS.glob("*.jinja"))
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.parametrize("path", HOSTILE, ids=lambda p: p.stem)
def test_every_hostile_template_is_refused_within_the_bound(path):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    with pytest.raises(BadInput, match="chat template") as e:
        render_chat(path.read_text(), MESSAGES, where="m")
    took = time.monotonic() - t0
    assert took < MAX_RENDER_SECONDS + 1.5, f"{path.stem}: {took:.1f} s"
    assert "\n" not in str(e.value)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before      # KiB
    assert grew < 64 * 1024, f"{path.stem}: the caller grew by {grew} KiB"


def test_ordinary_templates_still_render_and_the_checks_do_not_misfire():
    t = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n{% endfor %}"
         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    assert render_chat(t, MESSAGES) == ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
                                        "<|im_start|>assistant\n")
    assert render_chat("{{ '%5d|%-3s|{:>4}' % (7, 'a') }}{{ '{:>4}'.format(1) }}", []) == "    7|a  |{:>4}   1"
    assert render_chat("{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ 'a' ~ 'b' }}", []) == "1024 ababab [1, 2] ab"
    assert render_chat("{{ 'x' | center(5) }}|{{ range(3) | list | join(',') }}", []) == "  x  |0,1,2"
    assert render_chat("{{ strftime_now('%Y') | length }}", []) == "4"


def test_llama_cpp_python_never_renders_a_gguf_template_itself(tmp_path):
    """``Llama()`` compiles the GGUF's templates and ``create_chat_completion`` renders them with
    llama-cpp-python's own, unbounded Jinja: our loader swaps in the bounded renderer."""
    from edgellm.runtime.llamacpp import _SandboxedChatFormatter, _templates_sandboxed
    from llama_cpp import llama_chat_format

    with _templates_sandboxed():
        f = llama_chat_format.Jinja2ChatFormatter(template=(CORPUS / "center-method.jinja").read_text(),
                                                  eos_token="</s>", bos_token="<s>")
        assert isinstance(f, _SandboxedChatFormatter)
    assert llama_chat_format.Jinja2ChatFormatter is not _SandboxedChatFormatter
    t0 = time.monotonic()
    with pytest.raises(BadInput, match="chat template"):
        f(messages=MESSAGES)
    assert time.monotonic() - t0 < MAX_RENDER_SECONDS + 1.5
    ok = _SandboxedChatFormatter("{{ bos_token }}{{ messages[0]['content'] }}{{ eos_token }}", "</s>", "<s>")
    assert ok(messages=MESSAGES).prompt == "<s>What is the capital of France?</s>"
