"""The contract's minimal compatible subset, driven through the real portkey-ai and openai SDKs.

Env: TOLLGATE_URL (http://host:port), ADMIN_KEY, MOCK_URL (the mock provider's /v1 base).
Prints one line per step and a final JSON line with what the Rust side checks. Any failed
assertion exits non-zero.
"""
import base64
import json
import os
import struct
import sys

import openai
from portkey_ai import Portkey

BASE = os.environ["TOLLGATE_URL"] + "/v1"
ADMIN = os.environ["ADMIN_KEY"]
MOCK = os.environ["MOCK_URL"]
admin = Portkey(api_key=ADMIN, base_url=BASE)
out = {}


def step(name):
    print("step:", name, flush=True)


def expect_status(fn, status):
    """Calls fn and checks it raised the SDK's status error with this HTTP status."""
    try:
        fn()
    except Exception as e:  # portkey admin, portkey's vendored openai, and openai errors differ
        code = getattr(e, "status_code", None)
        assert code == status, (code, status, repr(e))
        return e
    raise AssertionError(f"expected HTTP {status}")


step("1 workspaces.create / list / retrieve / update")
ws = admin.admin.workspaces.create(name="Team Alpha", description="alpha", defaults={"metadata": {"department": "engineering"}})
assert ws.id and ws.slug.startswith("ws-") and isinstance(ws.created_at, str), ws
listed = admin.admin.workspaces.list()
assert any(w["id"] == ws.id for w in listed.data), listed
got = admin.admin.workspaces.retrieve(workspace_id=ws.slug)
assert got.id == ws.id
admin.admin.workspaces.update(workspace_id=ws.id, description="alpha team")
assert admin.admin.workspaces.retrieve(workspace_id=ws.id).description == "alpha team"

step("3 integrations.create with custom_host")
integ = admin.integrations.create(name="Mock OpenAI", slug="mock-openai", ai_provider_id="openai",
                                  key="sk-mock-provider-key-0123456789", configurations={"custom_host": MOCK})
assert integ.slug == "mock-openai", integ
full = admin.integrations.retrieve(slug="mock-openai")
assert "0123456789" not in json.dumps(full.model_dump()), "provider key leaked"
assert full.masked_key and full.masked_key.endswith("6789"), full.masked_key
assert any(i.slug == "mock-openai" for i in admin.integrations.list().data)

step("4 integrations.workspaces.update (limits stored, default provider created)")
admin.integrations.workspaces.update(slug="mock-openai", workspaces=[{
    "id": ws.id, "enabled": True,
    "usage_limits": [{"type": "cost", "credit_limit": 10, "alert_threshold": 8, "periodic_reset": "monthly"}],
    "rate_limits": [{"type": "requests", "unit": "rpm", "value": 1000}],
    "default_provider_slug": "alpha-openai"}])
wl = admin.integrations.workspaces.list(slug="mock-openai")
entry = [w for w in wl.workspaces if w["id"] == ws.id][0]
assert entry["usage_limits"]["credit_limit"] == 10 and entry["rate_limits"]["value"] == 1000, entry

step("5 integrations.models.update (allow-list)")
admin.integrations.models.update(slug="mock-openai", allow_all_models=False, models=[
    {"slug": "gpt-4o-mini", "enabled": True},
    {"slug": "gpt-4o", "enabled": True},
    {"slug": "text-embedding-3-small", "enabled": True},
    {"slug": "gpt-3.5-turbo-instruct", "enabled": True},
    {"slug": "my-custom", "enabled": True, "is_custom": True,
     "pricing_config": {"type": "static", "pay_as_you_go": {"request_token": {"price": 0.001}, "response_token": {"price": 0.002}}}},
    {"slug": "fail-500", "enabled": True, "base_model_slug": "gpt-4o-mini"},  # priced as its base
    {"slug": "gpt-4", "enabled": False}])
models = admin.integrations.models.list(slug="mock-openai")
assert models.allow_all_models is False and len(models.models) == 7, models

step("providers list/retrieve")
provs = admin.providers.list(workspace_id=ws.id)
assert any(p["slug"] == "alpha-openai" for p in provs.data), provs
prov = admin.providers.retrieve(slug="alpha-openai", workspace_id=ws.id)
assert isinstance(prov.rate_limits, list) or prov.rate_limits is None

step("6-7 virtual_keys.create / list / retrieve / update")
vk = admin.virtual_keys.create(name="Alpha VK", provider="openai", key="sk-vk-secret-abcdefghijkl", workspace_id=ws.id,
                               usage_limits={"type": "cost", "credit_limit": 5}, rate_limits=[{"type": "requests", "unit": "rpm", "value": 100}],
                               custom_host=MOCK)
assert vk.slug, vk
vks = admin.virtual_keys.list(workspace_id=ws.id)
assert any(v["slug"] == vk.slug for v in vks.data), vks
assert "abcdefghijkl" not in json.dumps(vks.model_dump())
admin.virtual_keys.update(slug=vk.slug, note="rotated")
assert admin.virtual_keys.retrieve(slug=vk.slug).note == "rotated"

step("8 configs.create (fallback)")
cfg = admin.configs.create(name="fallback", workspace_id=ws.id, config={
    "strategy": {"mode": "fallback", "on_status_codes": [500, 502, 503]},
    "targets": [
        {"provider": "@alpha-openai", "override_params": {"model": "fail-500"}},
        {"virtual_key": vk.slug, "override_params": {"model": "gpt-4o-mini"}},
    ]})
assert cfg.slug.startswith("pc-") and cfg.version_id, cfg
assert admin.configs.retrieve(slug=cfg.slug).config["strategy"]["mode"] == "fallback"
assert any(c["slug"] == cfg.slug for c in admin.configs.list(workspace_id=ws.id).data)
bad = expect_status(lambda: admin.configs.create(name="bad", workspace_id=ws.id, config={"strategy": {"mode": "fallback"}}), 400)
assert "targets" in str(bad)

step("9-13 api_keys create / retrieve / update / list")
created = admin.api_keys.create(type="workspace", sub_type="service", name="alpha-svc", workspace_id=ws.id,
                                scopes=["completions.write", "analytics.view"], usage_limits={"type": "cost", "credit_limit": 50},
                                rate_limits=[{"type": "requests", "unit": "rpm", "value": 600}],
                                defaults={"metadata": {"department": "engineering", "env": "test"}},
                                alert_emails=["finance@example.com"])
KEY = created.key
assert KEY.startswith("tg_") and created.id, created
got = admin.api_keys.retrieve(id=created.id)
assert got.key != KEY and "****" in got.key, got.key
assert got.type == "workspace-service" and isinstance(got.created_at, str)
assert got.rate_limits[0]["value"] == 600 and got.usage_limits["credit_limit"] == 50
# A rate limit cannot be edited once set: remove it, then set the new one.
expect_status(lambda: admin.api_keys.update(id=created.id, rate_limits=[{"type": "requests", "unit": "rpm", "value": 700}]), 400)
admin.api_keys.update(id=created.id, name="alpha-svc-2", rate_limits=[])
admin.api_keys.update(id=created.id, rate_limits=[{"type": "requests", "unit": "rpm", "value": 700}])
got = admin.api_keys.retrieve(id=created.id)
assert got.name == "alpha-svc-2" and got.rate_limits[0]["value"] == 700, got
keys = admin.api_keys.list(workspace_id=ws.id)
assert any(k["id"] == created.id for k in keys.data) and keys.total >= 1
org_key = admin.api_keys.create(type="organisation", sub_type="service", name="org-reader", scopes=["workspaces.list"])
expect_status(lambda: admin.api_keys.create(type="organisation", sub_type="user", name="x", scopes=[]), 400)

step("14 chat.completions via provider=@slug with metadata and trace id")
pk = Portkey(api_key=KEY, base_url=BASE, provider="@alpha-openai", metadata={"_user": "u1", "team": "alpha"}, trace_id="trace-14")
r = pk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
assert r.choices[0].message.content == "Hello from the mock!" and r.usage.prompt_tokens == 12, r
oa_hdr = openai.OpenAI(api_key=KEY, base_url=BASE, max_retries=0,
                       default_headers={"x-portkey-provider": "@alpha-openai", "x-portkey-trace-id": "trace-14"})
raw = oa_hdr.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
assert raw.headers.get("x-portkey-trace-id") == "trace-14", dict(raw.headers)
assert raw.headers.get("x-portkey-last-used-option-index") == "config"

step("15 streaming with include_usage and config=pc-… (fallback to the virtual key)")
pk_cfg = Portkey(api_key=KEY, base_url=BASE, config=cfg.slug)
chunks = list(pk_cfg.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                             stream=True, stream_options={"include_usage": True}))
assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 7 and chunks[-1].choices == [], chunks[-1]
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == "w0 w1 w2 ", text

step("stream without include_usage hides the usage chunk")
chunks = list(pk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks), chunks[-1]

step("non-stream through the fallback config")
oa_cfg = openai.OpenAI(api_key=KEY, base_url=BASE, max_retries=0, default_headers={"x-portkey-config": cfg.slug})
r = oa_cfg.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
assert r.headers.get("x-portkey-last-used-option-index") == "config.targets[1]", dict(r.headers)

step("custom pricing model")
pk.chat.completions.create(model="my-custom", messages=[{"role": "user", "content": "hi"}])

step("openai SDK: Bearer gateway key + model=@provider/model")
oa = openai.OpenAI(api_key=KEY, base_url=BASE, max_retries=0)
r = oa.chat.completions.create(model="@alpha-openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
assert r.usage.total_tokens == 19, r.usage
s = oa.chat.completions.create(model="@alpha-openai/gpt-4o", messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                               stream=True, stream_options={"include_usage": True})
last = list(s)[-1]
assert last.usage.prompt_tokens == 13, last

step("openai SDK: embeddings float and base64, completions, models")
e = oa.embeddings.create(model="@alpha-openai/text-embedding-3-small", input="hello")
assert [round(x, 3) for x in e.data[0].embedding] == [0.25, -0.5, 1.0], e.data[0].embedding
e = oa.embeddings.create(model="@alpha-openai/text-embedding-3-small", input="hello", encoding_format="float")
assert e.data[0].embedding == [0.25, -0.5, 1.0]
pe = pk.embeddings.create(model="text-embedding-3-small", input="hello")
vec = pe.data[0].embedding
if isinstance(vec, str):
    vec = list(struct.unpack("<3f", base64.b64decode(vec)))
assert vec == [0.25, -0.5, 1.0], vec
c = oa.completions.create(model="@alpha-openai/gpt-3.5-turbo-instruct", prompt="say hi")
assert c.choices[0].text == "Hello!" and c.usage.total_tokens == 7
ms = oa.models.list()
ids = [m.id for m in ms.data]
assert "@alpha-openai/gpt-4o-mini" in ids and "@alpha-openai/gpt-4" not in ids, ids
assert oa.models.retrieve("@alpha-openai/gpt-4o-mini").id == "@alpha-openai/gpt-4o-mini"

step("default headers style (x-portkey-api-key + x-portkey-provider)")
oh = openai.OpenAI(api_key="sk-ignored", base_url=BASE, max_retries=0,
                   default_headers={"x-portkey-api-key": KEY, "x-portkey-provider": "@alpha-openai"})
assert oh.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]).usage.total_tokens == 12 + 7

step("refusals: disallowed model 403, unknown provider 400, admin key 403, bad key 401")
before_mock = None
expect_status(lambda: pk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}]), 403)
expect_status(lambda: oa.chat.completions.create(model="@nope/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]), 400)
adm_dp = Portkey(api_key=ADMIN, base_url=BASE, provider="@alpha-openai")
expect_status(lambda: adm_dp.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]), 403)
bad = Portkey(api_key="tg_not_a_key", base_url=BASE, provider="@alpha-openai")
expect_status(lambda: bad.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]), 401)
expect_status(lambda: Portkey(api_key="", base_url=BASE).admin.workspaces.list(), 401)
expect_status(lambda: admin.api_keys.retrieve(id="no-such-key"), 404)
expect_status(lambda: admin.integrations.create(name="dup", slug="mock-openai", ai_provider_id="openai"), 409)

step("analytics")
rng = {"time_of_generation_min": "2020-01-01T00:00:00Z", "time_of_generation_max": "2100-01-01T00:00:00Z"}
g = admin.analytics.graphs.requests(**rng, workspace_slug=ws.slug)
gd = g.model_dump()
assert gd["summary"]["total"] >= 10, gd["summary"]
cost = admin.analytics.graphs.cost(**rng, workspace_slug=ws.slug).model_dump()
tokens = admin.analytics.graphs.tokens(**rng, workspace_slug=ws.slug).model_dump()
lat = admin.analytics.graphs.latency(**rng, workspace_slug=ws.slug).model_dump()
assert {"avg", "p50", "p90", "p99"} <= set(lat["summary"]), lat
errs = admin.analytics.graphs.errors(**rng, workspace_slug=ws.slug).model_dump()
assert errs["summary"]["total"] >= 1, errs  # the fallback's first target answered 500
users = admin.analytics.groups.users(**rng, workspace_slug=ws.slug).model_dump()
assert any(u["user"] == "u1" for u in users["data"]), users
models_g = admin.analytics.groups.ai_models(**rng, workspace_slug=ws.slug).model_dump()
assert any(m["ai_model"] == "gpt-4o-mini" for m in models_g["data"]), models_g
dept = admin.analytics.groups.metadata(metadata_key="department", **rng, workspace_slug=ws.slug).model_dump()
assert any(d["metadata_value"] == "engineering" for d in dept["data"]), dept
wsg = admin.analytics.groups.workspaces(**rng).model_dump()
assert any(w["workspace_slug"] == ws.slug for w in wsg["data"]), wsg
mine = Portkey(api_key=KEY, base_url=BASE).analytics.graphs.requests(**rng).model_dump()
assert mine["summary"]["total"] == gd["summary"]["total"], (mine, gd)

step("current usage on GETs")
k = admin.api_keys.retrieve(id=created.id).model_dump()
assert k["current_usage"]["requests"] >= 10, k["current_usage"]

step("delete: key stops working immediately; vk and config deleted")
admin.api_keys.delete(id=created.id)
expect_status(lambda: pk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]), 401)
admin.configs.delete(slug=cfg.slug)
admin.virtual_keys.delete(slug=vk.slug)
expect_status(lambda: admin.virtual_keys.retrieve(slug=vk.slug), 404)
admin.api_keys.delete(id=org_key.id)

out.update({"workspace_id": ws.id, "workspace_slug": ws.slug, "key_id": created.id,
            "cost_cents": str(cost["summary"]["total"]), "tokens": str(tokens["summary"]["total"])})
print("RESULT " + json.dumps(out))
