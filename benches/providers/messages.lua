-- wrk script: POST an Anthropic Messages request. Env: AUTH (a Tollgate key, sent as x-api-key), MODEL.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.headers["x-api-key"] = os.getenv("AUTH") or ""
wrk.body = '{"model":"' .. (os.getenv("MODEL") or "claude-3-7-sonnet-20250219") .. '","max_tokens":64,"messages":[{"role":"user","content":"Say hello in one short sentence, please."}]}'
function done(s, lat, req)
  local e = s.errors
  io.write(string.format("RESULT reqs=%d dur_s=%.3f rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f non2xx=%d sockerr=%d\n",
    s.requests, s.duration / 1e6, s.requests / (s.duration / 1e6), lat:percentile(50) / 1e3, lat:percentile(90) / 1e3,
    lat:percentile(99) / 1e3, lat.max / 1e3, e.status, e.connect + e.read + e.write + e.timeout))
end
