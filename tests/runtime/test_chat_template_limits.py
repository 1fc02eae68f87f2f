"""Chat templates run under limits (runtime/tokenizer.py): a step budget, sizes of what operators, filters
and methods build, range() lengths, integer sizes and the output. A template over a limit is a one-line
TccError naming the template's file; real templates render exactly as in plain Jinja.

The hostile templates here ran for ever or built gigabytes before the limits (issue 21, item 3).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tcc.errors import TccError
from tcc.runtime import tokenizer as tk
from tcc.runtime.tokenizer import format_chat
from tests.conftest import MODELS_DIR

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "What is 2+2?"}]

NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"

# (template, words of the error): each went on for ever or built a huge value before the limits.
HOSTILE = {
    "nested-loops": (NESTED_LOOPS, "steps"),
    "repeat-string": ("{{ 'a' * 10**9 }}", "repetition (*)"),
    "repeat-var": ("{% set n = 10**9 %}{{ 'a' * n }}", "repetition (*)"),
    "repeat-list": ("{{ ([0] * 100000) * 100000 }}", "repetition (*)"),
    "nested-lists": ("{{ [[[0] * 3000] * 3000] * 3000 }}", "larger than"),
    "power": ("{{ 10 ** (10 ** 8) }}", "**"),
    "power-var": ("{% set x = 10 ** 10 %}{{ x ** x }}", "**"),
    "square-loop": ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
                    "{% endfor %}{{ ns.x }}", "integer"),
    "doubling-tilde": ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                       "{% endfor %}{{ ns.s|length }}", "concatenation (~)"),
    "doubling-plus": ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}{{ ns.s|length }}", "concatenation (+)"),
    "doubling-block": ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set t %}{{ ns.s }}{{ ns.s }}"
                       "{% endset %}{% set ns.s = t %}{% endfor %}{{ ns.s|length }}", "writes more than"),
    "literal-in-macro": ("{% macro m() %}{% for i in range(100000) %}" + "y" * 1000
                         + "{% endfor %}{% endmacro %}{{ m()|length }}", "writes more than"),
    "doubling-replace": ("{% set ns = namespace(s='a' * 1000) %}{% for i in range(40) %}"
                         "{% set ns.s = ns.s|replace('a', 'aa') %}{% endfor %}{{ ns.s|length }}", "replace"),
    "center-filter": ("{{ 'x'|center(10**9) }}", "center"),
    "center-method": ("{{ 'x'.center(10**9) }}", "str.center"),
    "ljust-method": ("{{ 'x'.ljust(10**9) }}", "str.ljust"),
    "expandtabs": ("{{ ('\t' * 1000).expandtabs(100000) }}", "expandtabs"),
    "indent-filter": ("{{ ('a\n' * 1000)|indent(100000) }}", "indent"),
    "percent-width": ("{{ '%0999999999d' % 1 }}", "% formatting"),
    "percent-precision": ("{{ '%.999999999f' % 1.0 }}", "% formatting"),
    "format-filter": ("{{ '%999999999d'|format(1) }}", "format filter"),
    "format-method": ("{{ '{:>999999999}'.format(1) }}", "str.format"),
    "join-filter": ("{{ (['a'] * 1000)|join('y' * 100000) }}", "join filter"),
    "join-method": ("{{ ('y' * 100000).join(['a'] * 1000) }}", "str.join"),
    "batch-fill": ("{{ [1]|batch(10**9, 0)|list|length }}", "batch"),
    "huge-range": ("{{ range(10**9)|length }}", "range()"),
    "tojson-indent": ("{{ messages|tojson(indent=10**9) }}", "tojson indent"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_template_is_a_one_line_error(name):
    source, words = HOSTILE[name]
    with pytest.raises(TccError) as e:
        format_chat(MESSAGES, template=source)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("chat template <inline> stopped: over a limit"), msg
    assert words in msg, msg


def test_limits_are_deterministic_and_reusable(monkeypatch):
    # The step budget counts events, not seconds: the same template stops at the same place every time.
    monkeypatch.setattr(tk, "TEMPLATE_MAX_STEPS", 5000)
    src = "{% for i in range(100000) %}{{ i }},{% endfor %}"
    before = sys.gettrace()  # (a coverage tool's tracer, or None)
    for _ in range(2):
        with pytest.raises(TccError, match="more than 5000 steps"):
            format_chat(MESSAGES, template=src)
        assert sys.gettrace() is before  # the render's tracer is gone
    # a budget is per render: the next template renders in full
    assert format_chat(MESSAGES, template="{% for i in range(1000) %}{% endfor %}{{ messages|length }}") == "4"


def test_output_limit(monkeypatch):
    monkeypatch.setattr(tk, "TEMPLATE_MAX_SIZE", 1000)
    monkeypatch.setattr(tk, "TEMPLATE_MAX_WRITTEN", 4000)
    assert len(format_chat(MESSAGES, template="{% for i in range(90) %}0123456789{% endfor %}")) == 900
    with pytest.raises(TccError, match="rendered prompt is longer than 1000"):
        format_chat(MESSAGES, template="{% for i in range(110) %}0123456789{% endfor %}")
    with pytest.raises(TccError, match="writes more than 4000"):
        format_chat(MESSAGES, template="{% for i in range(500) %}0123456789{% endfor %}")


def test_dead_branch_is_not_refused():
    # Jinja folds constants at compile time; a limit met while folding leaves the expression to the
    # render, so a branch that never runs does not make the template fail.
    assert format_chat(MESSAGES, template="{% if false %}{{ 'x'|center(10**9) }}{{ 'a' * 10**9 }}{% endif %}ok") == "ok"


def test_ordinary_values_still_work():
    src = ("{{ 2 ** 10 }} {{ 2 ** -1 }} {{ 'ab' * 3 }} {{ [1, 2] + [3] }} {{ 'x' ~ 1 ~ [2] }}"
           " {{ '%5d|%-3s|' % (7, 'a') }}"
           " {{ '%.2f'|format(3.14159) }} {{ '{:>4}'.format('b') }} {{ 'a b'|replace(' ', '--') }}"
           " {{ ['p', 'q']|join(', ') }} {{ 'x'|center(5) }}| {{ 'line\nnext'|indent(2) }} {{ range(3)|list }}"
           " {{ [1, 2, 3]|batch(2, 0)|list }} {{ 'a\tb'.expandtabs(4) }} {{ 10 * 10 }} {{ 7 % 3 }}")
    assert format_chat(MESSAGES, template=src) == (
        "1024 0.5 ababab [1, 2, 3] x1[2]     7|a  | 3.14    b a--b p, q   x  | line\n  next [0, 1, 2]"
        " [[1, 2], [3, 0]] a   b 100 1")


REAL_TEMPLATES = {
    "chatml": ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
               "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
               "{% endif %}"),
    "llama3-tools": (
        "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = "
        "messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set "
        "system_message = \"\" %}\n{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n"
        "{%- if tools is not none %}\n    {{- \"Environment: ipython\\n\" }}\n    {%- for t in tools %}\n"
        "        {{- t | tojson(indent=4) }}\n        {{- \"\\n\\n\" }}\n    {%- endfor %}\n{%- endif %}\n"
        "{{- system_message }}\n{{- \"<|eot_id|>\" }}\n{%- for message in messages %}\n    {{- "
        "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
        "'<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- "
        "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"),
    "namespace-and-loop": (
        "{% set ns = namespace(n=0, text='') %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{% set ns.text = ns.text ~ loop.index ~ ':' ~ m.role[:1]|upper ~ ' ' %}{% if loop.last %}"
        "{{ ns.text }}({{ ns.n }}){{ '%03d' % ns.n }}{{ m.content|wordcount }}{% endif %}{% endfor %}"
        "{{ messages|map(attribute='role')|unique|list|tojson }}{{ messages|selectattr('role', 'equalto', "
        "'user')|list|length }}"),
}


@pytest.mark.parametrize("name", sorted(REAL_TEMPLATES))
def test_real_templates_render_as_in_plain_jinja(name):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tk._tojson
    tools = [{"name": "add", "parameters": {"a": "int", "b": "int"}}]
    conversation = MESSAGES * 200  # a long conversation stays far below every limit
    want = env.from_string(REAL_TEMPLATES[name]).render(messages=conversation, bos_token="<s>", eos_token="</s>",
                                                        add_generation_prompt=True, tools=tools)
    got = format_chat(conversation, template=REAL_TEMPLATES[name], tools=tools)
    assert got == want and len(got) > 1000


# -- through the CLI: the template comes with a model folder, and compile names its file -----------------

FIXTURE = os.path.join(MODELS_DIR, "llm", "llama_past_dynamo")


def test_chat_config_does_not_take_a_limit_for_no_system_support(monkeypatch):
    """chat_config renders with a system message to see whether the template supports one; a template
    that fails there has no system prompt, but one that goes over a limit there is an error."""
    monkeypatch.setattr(tk, "TEMPLATE_MAX_STEPS", 20000)
    tok = tk.Tokenizer.from_dir(FIXTURE)
    turns = "{% for m in messages %}<{{ m.role }}:{{ m.content }}>{% endfor %}"
    tok.chat_templates = {"default": "{% if messages[0].role == 'system' %}{{ raise_exception('no system') }}"
                                     "{% endif %}" + turns}
    assert tk.chat_config(tok)["first_user_prefix_with_system"] is None
    tok.chat_templates = {"default": "{% if messages[0].role == 'system' %}" + NESTED_LOOPS + "{% endif %}" + turns}
    with pytest.raises(tk.ChatTemplateLimitError, match="more than 20000 steps"):
        tk.chat_config(tok)


def _one_line_error(proc, *needles: str) -> str:
    assert proc.returncode not in (0, 70), (proc.returncode, proc.stderr)
    errors = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("tcc: ")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    assert errors[0].startswith("tcc: error: ") and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_compile_with_an_endless_chat_template_is_a_one_line_error(tmp_path):
    """Before the limits, `tcc compile` hung for ever on this model folder (two nested range(100000) loops
    in tokenizer_config.json's chat_template)."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("model.onnx", "tokenizer.json", "config.json", "generation_config.json"):
        shutil.copy(os.path.join(FIXTURE, name), folder / name)
    with open(os.path.join(FIXTURE, "tokenizer_config.json")) as f:
        config = json.load(f)
    config["chat_template"] = NESTED_LOOPS
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, "-m", "tcc.cli", "compile", str(folder / "model.onnx"), "-o",
                           str(tmp_path / "out"), "--max-context", "32", "-q"], capture_output=True, text=True,
                          timeout=900)
    _one_line_error(proc, str(folder / "tokenizer_config.json"), "steps")
    assert not (tmp_path / "out").exists()
