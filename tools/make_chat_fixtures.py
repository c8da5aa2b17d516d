#!/usr/bin/env python3
"""Build the chat-template reference cases the tests compare against, with HF transformers.

For each of seven template styles this writes tests/fixtures/chat/<style>/ with a tokenizer.json
(the bundled model's byte-level BPE plus the style's special tokens) and the template where
checkpoints keep it (a string in tokenizer_config.json, a list of named templates, or a
chat_template.jinja file). tests/fixtures/chat/cases.json then holds, for every conversation,
what HF's `apply_chat_template(..., add_generation_prompt=...)` renders (`text`) and its ids
(`tokens`), or the error HF raises (`error`); and HF's ids of a plain prompt (`plain`).

The templates are written here in the style of the published ones (Qwen3's ChatML, Mixtral's
[INST], OLMoE's tulu, Granite 3, DeepSeek V3), or are the published one (gpt-oss's harmony,
from real/, with its tokenizer's special tokens and conversations of its own: reasoning kept
beside a tool call, dropped from earlier turns, a reasoning effort; and Gemma 4's, also from
real/, with conversations of its own: thinking switched on and off, a developer turn, tools
with nested schemas, OpenAI-style tool calls and results, Gemma's own `tool_responses`,
thought channels stripped from earlier turns, nulls where it writes values, and image, audio
and video content parts), and use the constructs those use: namespace,
reversed slices, loop.last, Python string methods, tojson, raise_exception, bos/eos tokens,
and the whitespace control that trim_blocks/lstrip_blocks change.

    pip install -r tools/requirements.txt
    python tools/make_chat_fixtures.py

With --real-templates DIR (llama.cpp's models/templates/, which ../shared/bench/anchors.sh
unpacks) it instead copies every published template there into tests/fixtures/chat/real/ and
writes real/cases.json: each template over the conversations of REAL_CONVERSATIONS (plain,
system, multi-turn, tools offered, a tool call and its result, reasoning, thinking switched
off, a conversation ending with the assistant's turn, null fields as OpenAI-style clients send
them, documents), as HF renders them (`text`, and `tokens` by one
shared tokenizer) or the error HF raises. `strftime_now` is pinned to REAL_NOW, as the tests
pin it.

    python tools/make_chat_fixtures.py --real-templates ~/moe-anchors/llama/models/templates
"""

import argparse
import datetime
import json
import shutil
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, processors
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "chat"
BASE_TOKENIZER = ROOT / "models" / "tiny-shakespeare-moe" / "tokenizer.json"

CHATML = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query=messages|length - 1, searching=true) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.searching and message.role == 'user' and not message.content.startswith('<tool_response>') %}
        {%- set ns.searching = false %}
        {%- set ns.last_query = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- set reasoning = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query and reasoning %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

INST = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system_message is defined %}"
    "{{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- ' [INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] | trim + eos_token }}"
    "{%- else %}{{- raise_exception('Only user, assistant and system roles are supported!') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Block tags on lines of their own: trim_blocks and lstrip_blocks decide every newline here.
TULU = """\
{{ bos_token }}{% for message in messages %}
{% if message['role'] == 'system' %}
{{ '<|system|>\\n' + message['content'] }}
{% elif message['role'] == 'user' %}
{{ '<|user|>\\n' + message['content'] }}
{% elif message['role'] == 'assistant' %}
{{ '<|assistant|>\\n'  + message['content'] + eos_token }}
{% endif %}
{% if loop.last and add_generation_prompt %}
{{ '<|assistant|>' }}
{% endif %}
{% endfor %}"""

GRANITE = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = 'You are a careful assistant.' %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '<|start_of_role|>system<|end_of_role|>' + system_message + '<|end_of_text|>\\n' }}
{%- if tools %}
    {{- '<|start_of_role|>tools<|end_of_role|>' }}
    {%- for tool in tools %}
        {{- tool | tojson(indent=4) }}
        {%- if not loop.last %}
            {{- '\\n\\n' }}
        {%- endif %}
    {%- endfor %}
    {{- '<|end_of_text|>\\n' }}
{%- endif %}
{%- for message in loop_messages %}
    {{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\\n' }}
    {%- if loop.last and add_generation_prompt %}
        {{- '<|start_of_role|>assistant<|end_of_role|>' }}
    {%- endif %}
{%- endfor %}"""

GRANITE_PLAIN = (
    "{%- for message in messages %}{{- message['role'] | upper + ': ' + message['content'] + '\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- 'ASSISTANT:' }}{%- endif %}"
)

# Ends with a newline, which Jinja drops (keep_trailing_newline is off in HF).
DEEPSEEK = """\
{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}
{%- set ns = namespace(system_prompt='', is_first_sp=true) %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- if ns.is_first_sp %}
            {%- set ns.system_prompt = ns.system_prompt + message['content'] %}
            {%- set ns.is_first_sp = false %}
        {%- else %}
            {%- set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}{{- ns.system_prompt }}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- '<｜User｜>' + message['content'] }}
    {%- elif message['role'] == 'assistant' %}
        {%- set content = message['content'] %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1] %}
        {%- endif %}
        {{- '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}
    {%- endif %}
{%- endfor %}
{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}
"""

# style: special tokens added to the vocabulary, tokenizer_config.json fields, and where the
# template is kept ("string", "named" list, or "jinja" file).
STYLES = {
    "chatml": dict(
        specials=["<think>", "</think>"],
        config=dict(bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                    add_bos_token=False),
        template=CHATML, keep="string"),
    "inst": dict(
        specials=["<s>", "</s>", "[INST]", "[/INST]"],
        config=dict(bos_token="<s>", eos_token="</s>", unk_token=None, add_bos_token=True),
        template=INST, keep="string"),
    "tulu": dict(
        specials=["<|user|>", "<|assistant|>", "<|system|>"],
        config=dict(bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                    pad_token="<|endoftext|>", add_bos_token=False),
        template=TULU, keep="string"),
    "granite": dict(
        specials=["<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>"],
        config=dict(bos_token="<|end_of_text|>", eos_token="<|end_of_text|>",
                    pad_token="<|end_of_text|>", add_bos_token=False),
        template=[{"name": "default", "template": GRANITE_PLAIN},
                  {"name": "tool_use", "template": GRANITE}],
        keep="named"),
    "deepseek": dict(
        specials=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>",
                  "<｜Assistant｜>"],
        config=dict(bos_token={"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>",
                               "lstrip": False, "normalized": True, "rstrip": False,
                               "single_word": False, "special": True},
                    eos_token="<｜end▁of▁sentence｜>", add_bos_token=True),
        template=DEEPSEEK, keep="jinja"),
    # gpt-oss as published: its template (chat_template.jinja) and the o200k_harmony specials.
    "harmony": dict(
        specials=["<|startoftext|>", "<|return|>", "<|constrain|>", "<|channel|>", "<|start|>",
                  "<|end|>", "<|message|>", "<|call|>"],
        config=dict(bos_token="<|startoftext|>", eos_token="<|return|>",
                    pad_token="<|endoftext|>", add_bos_token=False),
        template=(OUT / "real" / "openai-gpt-oss-120b.jinja").read_text(), keep="jinja"),
    # Gemma 4 (google/gemma-4-26B-A4B-it and its siblings) as published: the template is
    # llama.cpp's models/templates/google-gemma-4-31B-it.jinja as vendored by the
    # llama-cpp-python 0.3.36 sdist (vendor/llama.cpp/models/templates/), unmodified (real/
    # keeps the same file); the specials are the control tokens of Gemma 4's vocabulary
    # (llama.cpp's models/ggml-vocab-gemma-4.gguf, same sdist), bos <bos> (2) and eos <eos> (1).
    "gemma4": dict(
        specials=["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|tool>", "<tool|>",
                  "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
                  '<|"|>', "<|think|>", "<|channel>", "<channel|>", "<|turn>", "<turn|>",
                  "<|image>", "<|audio>", "<|image|>", "<|audio|>", "<image|>", "<audio|>",
                  "<|video|>"],
        config=dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                    unk_token="<unk>", mask_token="<mask>", add_bos_token=True),
        template=(OUT / "real" / "google-gemma-4-31B-it.jinja").read_text(), keep="jinja"),
}

TOOLS = [{
    "type": "function",
    "function": {
        "name": "tide_table",
        "description": "High and low water for a port, in the port's time.",
        "parameters": {"type": "object",
                       "properties": {"port": {"type": "string", "description": "e.g. Dover"},
                                      "days": {"type": "integer"}},
                       "required": ["port"]},
    },
}]

CONVERSATIONS = {
    "one_user": [{"role": "user", "content": "Good morrow, who art thou?"}],
    "system_user": [{"role": "system", "content": "You speak in blank verse."},
                    {"role": "user", "content": "  Describe the sea.  "}],
    "multi_turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Name a king."},
                   {"role": "assistant", "content": "Lear."},
                   {"role": "user", "content": "And his daughters?"}],
    "unicode": [{"role": "user", "content": "Café, naïve, 日本語 and 👋 — all in one line?\n"}],
    "thinking": [{"role": "user", "content": "Two plus two?"},
                 {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\nFour."},
                 {"role": "user", "content": "And three more?"},
                 {"role": "assistant", "content": "<think>\nFour and three.\n</think>\n\nSeven."}],
    "not_alternating": [{"role": "user", "content": "Hello."},
                        {"role": "user", "content": "Hello again."}],
}

# Harmony's own: gpt-oss keeps reasoning in a `thinking` field, shows it to the model only beside
# a tool call not yet answered, and takes a reasoning effort.
HARMONY_CALL = {"type": "function", "function": {"name": "tide_table",
                                                 "arguments": {"port": "Dover", "days": 2}}}
HARMONY_CONVERSATIONS = {
    "reasoning_dropped": ([{"role": "user", "content": "Two plus two?"},
                           {"role": "assistant", "content": "Four.", "thinking": "Add them."},
                           {"role": "user", "content": "And three more?"}], None, {}),
    "reasoning_beside_a_tool_call": (
        [{"role": "system", "content": "Answer from the tables."},
         {"role": "user", "content": "When is high water at Dover?"},
         {"role": "assistant", "thinking": "The tide table has it.",
          "tool_calls": [HARMONY_CALL]},
         {"role": "tool", "content": "{\"high\": \"06:12\"}"}], TOOLS,
        {"reasoning_effort": "high"}),
    "channel_tags_in_content": ([{"role": "user", "content": "Hi"},
                                 {"role": "assistant",
                                  "content": "<|channel|>final<|message|>Hello"},
                                 {"role": "user", "content": "Again"}], None, {}),
}

# Gemma 4's own: each (messages, add_generation_prompt, tools, template variables).
GEMMA4_TOOLS = TOOLS + [{
    "type": "function",
    "function": {
        "name": "book_berth",
        "description": "Reserve a berth for a vessel.",
        "parameters": {
            "type": "object",
            "properties": {
                "port": {"type": "string", "description": "Harbour name"},
                "size": {"type": "string", "enum": ["small", "large"]},
                "crew": {"type": "array", "description": "Who is aboard",
                         "items": {"type": "object",
                                   "properties": {"name": {"type": "string"},
                                                  "age": {"type": "integer"}},
                                   "required": ["name"]}},
                "tags": {"type": "array", "items": {"type": ["string", "null"]}},
                "pilot": {"type": "boolean", "nullable": True},
                "vessel": {"type": "object", "description": "The ship",
                           "properties": {"length": {"type": "number"},
                                          "flag": {"type": "string"}},
                           "required": ["length"]},
            },
            "required": ["port", "size"],
        },
        "response": {"type": "object", "description": "The booking"},
    },
}]
GEMMA4_CALL = {"type": "function", "id": "call_1",
               "function": {"name": "tide_table", "arguments": {"port": "Dover", "days": 2}}}
GEMMA4_BOOKING = {"type": "function", "id": "call_2",
                  "function": {"name": "book_berth",
                               "arguments": {"port": "Dover", "size": "large", "pilot": True,
                                             "crew": [{"name": "Ann", "age": 41}],
                                             "vessel": {"length": 12.5, "flag": "UK"}}}}
GEMMA4_CONVERSATIONS = {
    # enable_thinking opens a system turn with <|think|>, before the system prompt if any, and
    # leaves out the empty thought channel of the generation prompt.
    "thinking_on": ([{"role": "system", "content": "  Be brief.\n"},
                     {"role": "user", "content": "Two plus two?"}], True, None,
                    {"enable_thinking": True}),
    "thinking_on_no_system": ([{"role": "user", "content": "Two plus two?"}], True, None,
                              {"enable_thinking": True}),
    "thinking_off": ([{"role": "user", "content": "Two plus two?"}], True, None,
                     {"enable_thinking": False}),
    "developer": ([{"role": "developer", "content": "Answer in French."},
                   {"role": "user", "content": "Hello."}], True, None, {}),
    # Thought channels in earlier model turns are stripped, as text or as content parts.
    "thought_stripped": ([{"role": "user", "content": "Two plus two?"},
                          {"role": "assistant",
                           "content": "<|channel>thought\nAdd them.<channel|>Four."},
                          {"role": "user", "content": "And three more?"},
                          {"role": "assistant", "content": [
                              {"type": "text",
                               "text": "<|channel>thought\nFour and three.<channel|> Seven. "}]},
                          {"role": "user", "content": "Thanks."}], True, None,
                         {"enable_thinking": True}),
    "tools_declared": ([{"role": "system", "content": "Answer from the tables."},
                        {"role": "user", "content": "Book me a berth at Dover."}], True,
                       GEMMA4_TOOLS, {"enable_thinking": True}),
    # OpenAI-style: a call, its result as a role `tool` turn (named by tool_call_id), the
    # reasoning beside a call after the last user turn kept; no generation prompt after a result.
    "tool_result": ([{"role": "user", "content": "When is high water at Dover?"},
                     {"role": "assistant", "content": "", "reasoning_content": "Ask the table.",
                      "tool_calls": [GEMMA4_CALL]},
                     {"role": "tool", "tool_call_id": "call_1",
                      "content": "{\"high\": \"06:12\"}"}], True, TOOLS, {}),
    # Two calls answered (a text result, a content-parts result, a result named only by
    # `name`), the answer continuing the same model turn, then a new question: the reasoning of
    # the earlier turn dropped (under `reasoning`, the alias HF fills in).
    "tool_round_trip": ([{"role": "system", "content": "Answer from the tables."},
                         {"role": "user", "content": "Tides at Dover, and book a berth."},
                         {"role": "assistant", "reasoning": "Two tools.",
                          "tool_calls": [GEMMA4_CALL, GEMMA4_BOOKING]},
                         {"role": "tool", "tool_call_id": "call_1", "content": "06:12"},
                         {"role": "tool", "tool_call_id": "call_2",
                          "content": [{"type": "text", "text": "booked "},
                                      {"type": "image"}, {"type": "text", "text": "B7"}]},
                         {"role": "tool", "name": "tide_table", "content": "12:30"},
                         {"role": "assistant", "content": "High water 06:12; berth B7."},
                         {"role": "user", "content": "And tomorrow?"}], True, GEMMA4_TOOLS,
                        {}),
    # Arguments given as a JSON string are written as they are; a call not yet answered.
    "tool_call_pending": ([{"role": "user", "content": "When is high water at Dover?"},
                           {"role": "assistant", "content": None, "tool_calls": [
                               {"type": "function", "id": "call_9",
                                "function": {"name": "tide_table",
                                             "arguments": "{\"port\": \"Dover\"}"}}]}],
                          True, TOOLS, {}),
    # Gemma's own: the results on the model's message (`tool_responses`), a mapping and a value.
    "tool_responses_field": ([{"role": "user", "content": "When is high water at Dover?"},
                              {"role": "assistant", "tool_calls": [GEMMA4_CALL],
                               "tool_responses": [
                                   {"name": "tide_table",
                                    "response": {"high": "06:12", "low": ["12:30", 1.5],
                                                 "ok": True}},
                                   {"response": 7}]},
                              {"role": "assistant", "content": "At 06:12."}], False, TOOLS,
                             {}),
    # Nulls where the template writes a value: an argument, a result without content.
    "null_values": ([{"role": "user", "content": "When is high water at Dover?"},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"type": "function", "id": "call_1",
                          "function": {"name": "tide_table",
                                       "arguments": {"port": "Dover", "days": None}}}]},
                     {"role": "tool", "tool_call_id": "call_1", "content": None}], True, TOOLS,
                    {}),
    # Media as content parts, their placeholders written in place; user text trimmed.
    "media_parts": ([{"role": "user", "content": [
                         {"type": "text", "text": "  What is in these?  "},
                         {"type": "image"}, {"type": "audio"}, {"type": "video"}]}],
                    True, None, {}),
}

PLAIN_PROMPT = "ROMEO: But, soft! what light"


def build_style(name, spec):
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    tok = Tokenizer.from_file(str(BASE_TOKENIZER))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in spec["specials"]])
    bos = spec["config"].get("bos_token")
    if spec["config"].get("add_bos_token"):
        # As Llama-family tokenizer.json files do: the post-processor prepends bos to plain
        # prompts, and apply_chat_template (no special tokens added) leaves it to the template.
        bos = bos["content"] if isinstance(bos, dict) else bos
        tok.post_processor = processors.Sequence([
            tok.post_processor,
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))]),
        ])
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **spec["config"]}
    if spec["keep"] == "jinja":
        (folder / "chat_template.jinja").write_text(spec["template"])
    else:
        config["chat_template"] = spec["template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2,
                                                             ensure_ascii=False) + "\n")
    return AutoTokenizer.from_pretrained(folder)


def render(tok, messages, add_generation_prompt, tools, variables=None):
    variables = variables or {}
    try:
        text = tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                       add_generation_prompt=add_generation_prompt,
                                       **variables)
    except Exception as e:  # noqa: BLE001 - the message is the reference
        return {"error": str(e)}
    ids = tok.apply_chat_template(messages, tools=tools, tokenize=True,
                                  add_generation_prompt=add_generation_prompt, **variables)
    if not isinstance(ids, list):
        ids = ids["input_ids"]
    # apply_chat_template tokenizes without adding special tokens: the template holds them.
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    return {"text": text, "tokens": ids}


# What `strftime_now` sees in the real-template cases (the tests pin the same instant).
REAL_NOW = datetime.datetime(2026, 7, 4, 9, 5, 3)
# The special tokens every real template gets (HF hands tokenizer_config.json's to templates).
REAL_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                 "pad_token": "<pad>"}

# Mistral's templates want ids of 9 letters and digits.
TOOL_CALL = {"type": "function", "id": "call00001",
             "function": {"name": "tide_table", "arguments": {"port": "Dover", "days": 2}}}

# Each: (messages, add_generation_prompt, tools, extra template variables).
REAL_CONVERSATIONS = {
    "plain": ([{"role": "user", "content": "Good morrow, who art thou?"}], True, None, {}),
    "system": ([{"role": "system", "content": "You speak in blank verse."},
                {"role": "user", "content": "Describe the sea."}], True, None, {}),
    "multi_turn": (CONVERSATIONS["multi_turn"], True, None, {}),
    "unicode": (CONVERSATIONS["unicode"], True, None, {}),
    "tools_offered": ([{"role": "user", "content": "When is high water at Dover?"}], True,
                      TOOLS, {}),
    "tool_call": ([{"role": "system", "content": "Answer from the tables."},
                   {"role": "user", "content": "When is high water at Dover?"},
                   {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]},
                   {"role": "tool", "tool_call_id": "call00001", "name": "tide_table",
                    "content": "{\"high\": \"06:12\", \"low\": \"12:30\"}"}],
                  True, TOOLS, {}),
    "reasoning": ([{"role": "user", "content": "Two plus two?"},
                   {"role": "assistant", "content": "Four.", "reasoning_content": "Add them."},
                   {"role": "user", "content": "And three more?"}], True, None, {}),
    "thinking_off": ([{"role": "user", "content": "Two plus two?"}], True, None,
                     {"enable_thinking": False, "reasoning_effort": "low"}),
    "ends_with_assistant": (CONVERSATIONS["multi_turn"][:3], False, None, {}),
    # As OpenAI-style clients send them: null content beside tool calls, null fields.
    "null_fields": ([{"role": "user", "content": "When is high water at Dover?",
                      "reasoning_content": None, "tool_calls": None},
                     {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
                     {"role": "tool", "tool_call_id": "call00001", "name": "tide_table",
                      "content": "{\"high\": \"06:12\"}"}], True, TOOLS, {}),
    "documents": ([{"role": "user", "content": "What does the log say?"}], True, None,
                  {"documents": [{"title": "Ship's log", "text": "Fair winds; 12 knots."}]}),
}


class PinnedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return REAL_NOW


def real_templates(source):
    """Copies the published templates of `source` and renders each over REAL_CONVERSATIONS."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import chat_template_utils

    chat_template_utils.datetime = PinnedDatetime
    out = OUT / "real"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(BASE_TOKENIZER), **REAL_SPECIALS)
    # tokenizer.json with the special tokens added, and tokenizer_config.json naming them.
    tok.save_pretrained(out)
    cases = []
    for path in sorted(Path(source).glob("*.jinja")):
        template = path.read_text()
        shutil.copy(path, out / path.name)
        for conv, (messages, add_generation_prompt, tools, variables) in REAL_CONVERSATIONS.items():
            case = {"template": path.name, "conversation": conv, "messages": messages,
                    "add_generation_prompt": add_generation_prompt}
            if tools:
                case["tools"] = tools
            if variables:
                case["variables"] = variables
            try:
                # `documents` is apply_chat_template's own argument, the rest template variables.
                text = tok.apply_chat_template(messages, chat_template=template, tools=tools,
                                               tokenize=False,
                                               add_generation_prompt=add_generation_prompt,
                                               **variables)
                case["text"] = text
                case["tokens"] = tok(text, add_special_tokens=False)["input_ids"]
            except Exception as e:  # noqa: BLE001 - the message is the reference
                case["error"] = f"{type(e).__name__}: {e}"
            cases.append(case)
    meta = {"source": "llama.cpp models/templates (llama-cpp-python 0.3.36 sdist)",
            "now": REAL_NOW.isoformat(), "specials": REAL_SPECIALS}
    (out / "cases.json").write_text(json.dumps({**meta, "cases": cases}, ensure_ascii=False,
                                               separators=(",", ":")) + "\n")
    errors = sum("error" in c for c in cases)
    print(f"{len(cases)} cases ({errors} errors) of {len(set(c['template'] for c in cases))} "
          f"templates in {out}")


def case(tok, style, conversation, messages, add_generation_prompt, tools, variables=None):
    out = {"style": style, "conversation": conversation, "messages": messages,
           "add_generation_prompt": add_generation_prompt}
    if tools:
        out["tools"] = tools
    if variables:
        out["variables"] = variables
    return {**out, **render(tok, messages, add_generation_prompt, tools, variables)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real-templates", metavar="DIR",
                    help="llama.cpp's models/templates: render the published templates instead")
    args = ap.parse_args()
    if args.real_templates:
        real_templates(args.real_templates)
        return
    from transformers.utils import chat_template_utils

    # gpt-oss's template writes today's date.
    chat_template_utils.datetime = PinnedDatetime
    cases, plain = [], []
    for name, spec in STYLES.items():
        tok = build_style(name, spec)
        plain.append({"style": name, "text": PLAIN_PROMPT,
                      "tokens": tok(PLAIN_PROMPT)["input_ids"]})
        for conv, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                for tools in (None, TOOLS):
                    if tools and name not in ("chatml", "granite", "harmony", "gemma4"):
                        continue
                    cases.append(case(tok, name, conv, messages, add_generation_prompt, tools))
        if name == "harmony":
            for conv, (messages, tools, variables) in HARMONY_CONVERSATIONS.items():
                cases.append(case(tok, name, conv, messages, True, tools, variables))
        if name == "gemma4":
            for conv, (messages, add_generation_prompt, tools, variables) in \
                    GEMMA4_CONVERSATIONS.items():
                cases.append(case(tok, name, conv, messages, add_generation_prompt, tools,
                                  variables))
    (OUT / "cases.json").write_text(json.dumps({"now": REAL_NOW.isoformat(), "cases": cases,
                                                "plain": plain}, indent=1,
                                               ensure_ascii=False) + "\n")
    errors = sum("error" in c for c in cases)
    print(f"{len(cases)} cases ({errors} errors) in {OUT}")


if __name__ == "__main__":
    main()
