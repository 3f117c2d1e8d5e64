"""Renders chat_extra_cases.json: more requests through the real chat template with jinja2 set up
as Hugging Face apply_chat_template does (sandboxed, trim_blocks, lstrip_blocks, tojson without
ASCII escaping, raise_exception). Run: python3 gen_chat_extra.py (jinja2 3.x)."""
import json

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


cfg = json.load(open("tokenizer/tokenizer_config.json"))
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
tmpl = env.from_string(cfg["chat_template"])

weather = {"type": "function", "function": {"name": "get_weather", "description": "Météo für eine Stadt <b>&</b>",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 3}},
                          "required": ["city"]}}}
requests = [
    {"messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
                  {"role": "tool", "content": "{\"temp\": 21.5, \"sky\": \"clear\"}"},
                  {"role": "tool", "content": "second result"},
                  {"role": "user", "content": "And tomorrow?"}],
     "tools": [weather]},
    {"messages": [{"role": "user", "content": "Call two tools"},
                  {"role": "assistant", "content": "Sure.", "tool_calls": [
                      {"name": "a", "arguments": "{\"x\": 1}"},
                      {"function": {"name": "b", "arguments": {"y": [1, 2.5, None, True]}}}]},
                  {"role": "tool", "content": "ok"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Think first"},
                  {"role": "assistant", "content": "<think>\nstep one\n</think>\n\nThe answer."},
                  {"role": "user", "content": "<tool_response>x</tool_response>"},
                  {"role": "assistant", "content": "final", "reasoning_content": "\nhidden\n"}],
     "add_generation_prompt": False},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "q1"},
                  {"role": "assistant", "content": "<think>r1</think>a1"},
                  {"role": "system", "content": "Mid-conversation system note"},
                  {"role": "user", "content": "日本語 ✓ \"quotes\""}]},
    {"messages": [{"role": "user", "content": "plain"}, {"role": "assistant", "content": None}],
     "add_generation_prompt": True},
]
cases = []
for r in requests:
    agp = r.get("add_generation_prompt", True)
    rendered = tmpl.render(messages=r["messages"], tools=r.get("tools"), add_generation_prompt=agp,
                           bos_token=cfg["bos_token"], eos_token=cfg["eos_token"])
    c = dict(r)
    c["add_generation_prompt"] = agp
    c["rendered"] = rendered
    cases.append(c)
json.dump({"about": "more requests through the real chat template, rendered by jinja2 " + jinja2.__version__
           + " set up as Hugging Face apply_chat_template (gen_chat_extra.py)", "cases": cases},
          open("chat_extra_cases.json", "w"), ensure_ascii=False, indent=1)
