"""Tollgate's /v1/messages driven by the real `anthropic` SDK, as Claude Code drives it
(ANTHROPIC_BASE_URL = the server's root, the Tollgate key as ANTHROPIC_API_KEY or
ANTHROPIC_AUTH_TOKEN, the provider in the model or in ANTHROPIC_CUSTOM_HEADERS), and chat driven by
the real `openai` SDK, on native upstreams.

PART=anthropic: for each upstream in UPSTREAMS (JSON: [{name, key, model, route, auth, fail}]) a
plain message, a stream (`messages.stream` + `get_final_message`), a tool call and its tool_result
turn, `count_tokens` and a 429; then the gateway's own refusals. PART=openai: for each upstream
(JSON: [{name, key, model, embed}]) a chat completion, a stream with include_usage, a request with
tools, and an embedding of each `[model, input]` in `embed` (an empty list: the provider has no
embeddings, and the call must be refused).
Every call carries its own trace id (`<name>-<case>`). Prints `RESULT <json>`.
"""

import json
import os

for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
    os.environ.pop(var, None)

import anthropic  # noqa: E402
import openai  # noqa: E402

URL = os.environ["TOLLGATE_URL"]
UPSTREAMS = json.loads(os.environ["UPSTREAMS"])
HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"name": "lookup", "description": "Looks a thing up.",
          "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}]


def trace(name, case):
    return {"x-portkey-trace-id": f"{name}-{case}"}


def failure(call):
    try:
        call()
    except anthropic.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "body": e.body}
    raise AssertionError("the call succeeded")


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def anthropic_client(u):
    """The client of upstream `u`: the key as x-api-key or as a bearer token; the provider in
    the model (`@slug/model`) or in a default header (Claude Code's ANTHROPIC_CUSTOM_HEADERS)."""
    headers = {"x-portkey-provider": f"@{u['slug']}"} if u["route"] == "header" else None
    auth = {"auth_token": u["key"]} if u["auth"] == "bearer" else {"api_key": u["key"]}
    return anthropic.Anthropic(base_url=URL, max_retries=0, default_headers=headers, **auth)


def model_of(u, model):
    return model if u["route"] == "header" else f"@{u['slug']}/{model}"


def anthropic_part():
    out = {}
    for u in UPSTREAMS:
        c, name, model = anthropic_client(u), u["name"], model_of(u, u["model"])
        r = {}
        m = c.messages.create(model=model, max_tokens=100, messages=HI, extra_headers=trace(name, "plain"))
        r["plain"] = {"type": m.type, "role": m.role, "text": text_of(m), "stop_reason": m.stop_reason,
                      "usage": m.usage.model_dump()}
        with c.messages.stream(model=model, max_tokens=100, messages=HI, extra_headers=trace(name, "stream")) as s:
            streamed = "".join(s.text_stream)
            final = s.get_final_message()
        r["stream"] = {"text": streamed, "final_text": text_of(final), "stop_reason": final.stop_reason,
                       "usage": final.usage.model_dump()}
        m = c.messages.create(model=model, max_tokens=100, messages=[{"role": "user", "content": "look it up"}],
                              tools=TOOLS, extra_headers=trace(name, "tool"))
        uses = [b for b in m.content if b.type == "tool_use"]
        assert uses, m
        turn = [{"role": "user", "content": "look it up"},
                {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "42"}]}]
        after = c.messages.create(model=model, max_tokens=100, messages=turn, tools=TOOLS,
                                  extra_headers=trace(name, "tool-result"))
        r["tool"] = {"stop_reason": m.stop_reason, "name": uses[0].name, "input": uses[0].input,
                     "id": uses[0].id, "after_text": text_of(after), "after_stop_reason": after.stop_reason}
        counted = c.messages.count_tokens(model=model, messages=HI, extra_headers=trace(name, "count"))
        r["count_tokens"] = counted.input_tokens
        r["rate_limited"] = failure(lambda: c.messages.create(
            model=model_of(u, u["fail"]), max_tokens=5, messages=HI, extra_headers=trace(name, "429")))
        out[name] = r
    u = UPSTREAMS[0]
    c = anthropic_client(u)
    out["unknown_provider"] = failure(lambda: c.messages.create(model="@nobody/claude", max_tokens=5, messages=HI))
    bad = anthropic.Anthropic(base_url=URL, api_key="tg_not-a-key", max_retries=0)
    out["bad_key"] = failure(lambda: bad.messages.create(model=f"@{u['slug']}/x", max_tokens=5, messages=HI))
    out["bad_key_count"] = failure(lambda: bad.messages.count_tokens(model=f"@{u['slug']}/x", messages=HI))
    return out


def openai_part():
    out = {}
    tools = [{"type": "function", "function": {"name": "lookup", "description": "Looks a thing up.",
                                               "parameters": TOOLS[0]["input_schema"]}}]
    for u in UPSTREAMS:
        c, name = openai.OpenAI(base_url=f"{URL}/v1", api_key=u["key"], max_retries=0), u["name"]
        model = f"@{u['slug']}/{u['model']}"
        r = {}
        done = c.chat.completions.create(model=model, messages=HI, extra_headers=trace(name, "chat"))
        r["chat"] = {"text": done.choices[0].message.content, "finish_reason": done.choices[0].finish_reason,
                     "usage": done.usage.model_dump()}
        chunks = list(c.chat.completions.create(model=model, messages=HI, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_headers=trace(name, "chat-stream")))
        r["stream"] = {"text": "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices),
                       "usage_chunks": [ch.usage.model_dump() for ch in chunks if ch.usage],
                       "last_has_usage": chunks[-1].usage is not None and not chunks[-1].choices}
        done = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "look it up"}],
                                         tools=tools, extra_headers=trace(name, "chat-tools"))
        msg = done.choices[0].message
        r["tools"] = {"text": msg.content, "finish_reason": done.choices[0].finish_reason,
                      "tool_calls": [{"name": t.function.name, "arguments": json.loads(t.function.arguments)}
                                     for t in msg.tool_calls or []]}
        r["embed"] = []
        for i, (m, given) in enumerate(u["embed"]):
            e = c.embeddings.create(model=f"@{u['slug']}/{m}", input=given, extra_headers=trace(name, f"embed-{i}"))
            r["embed"].append({"vectors": [d.embedding for d in e.data],
                               "prompt_tokens": e.usage.prompt_tokens if e.usage else None})
        if not u["embed"]:
            try:
                c.embeddings.create(model=model, input="hi", extra_headers=trace(name, "embed-refused"))
                raise AssertionError("embeddings succeeded")
            except openai.APIStatusError as e:
                r["embed_refused"] = {"class": type(e).__name__, "status": e.status_code, "body": e.body}
        out[name] = r
    return out


part = os.environ["PART"]
print("RESULT " + json.dumps(anthropic_part() if part == "anthropic" else openai_part()))
