#!/usr/bin/env python3
"""A mock AWS Bedrock runtime and STS, speaking the protocols as AWS documents them.

Every request must carry a SigV4 signature, which the mock recomputes with botocore's signer
(botocore.auth.SigV4Auth, a signer nobody here wrote) from the known test credentials: the base
keys below, or temporary keys it issued with AssumeRole (their session token must come along and
must not have expired). A bad signature is a 403 in AWS's error shape.

Start: `python bedrock_mock.py --port 0`; the first stdout line is the port it listens on.

Routes (service in the signature's credential scope: `bedrock` for /model/..., `sts` for /):
- POST /model/{id}/converse, /converse-stream: any model id (Converse); the stream is the AWS
  binary event stream (frames with CRC32s, encoded here per the spec and checked against
  botocore's decoder at start).
- POST /model/{id}/invoke, /invoke-with-response-stream: `anthropic.*` models (Anthropic
  Messages body with anthropic_version bedrock-2023-05-31; the stream's Anthropic events wrapped
  in `chunk` events {"bytes": base64}); `amazon.titan-embed*` and `cohere.embed*` (invoke only).
- POST /model/{id}/count-tokens: CountTokens of an InvokeModel body
  ({"input": {"invokeModel": {"body": base64}}}) for a foundation `anthropic.*` model id (an
  inference profile's is refused, as Bedrock does); answers {"inputTokens": COUNT_PER_MESSAGE
  a message}.
- POST / with the form Action=AssumeRole&...: STS. Temporary credentials expire after the TTL
  named in the RoleSessionName (`...ttl-<seconds>...`), else $BEDROCK_MOCK_STS_TTL, else 3600 s.
  A RoleArn ending in `/needs-external-id` requires ExternalId=ext-123.
- GET /_seen: every request seen (method, path, model, action, headers, body, signature verdict)
  as JSON; DELETE /_seen forgets them.

Behaviour by model id (substring): `fail-throttle` 429 ThrottlingException; `fail-500` 500
InternalServerException; `garbage` a body that is not the protocol (stream: a frame with a bad
CRC); `truncate` a stream cut inside a frame; `stream-exception` a modelStreamErrorException
mid-stream; `tool` answers with a tool use (Converse, when the request has tools). InvokeModel of
an `anthropic.*` model calls the first tool (a `tool_use` block) when the request has `tools` and
its last message carries no `tool_result` (whole answers; streams stay text). Titan refuses the
text `throttle-me` with a 429 ThrottlingException.

What it bills (every chat answer): see USAGE; Titan TITAN_TOKENS per text; Cohere COHERE_TOKENS
per text (in the X-Amzn-Bedrock-Input-Token-Count header only, as Bedrock does).
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import secrets
import struct
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer

BASE_KEYS = {"AKIDTOLLGATEMOCK": "tollgate-mock-secret-access-key"}
USAGE = {"inputTokens": 11, "outputTokens": 7, "cacheReadInputTokens": 5, "cacheWriteInputTokens": 3}
USAGE["totalTokens"] = sum(USAGE.values())
TITAN_TOKENS = 5
COUNT_PER_MESSAGE = 6
COHERE_TOKENS = 4
TEXT = ["Hello", " from", " the Bedrock mock."]
TOOL_ARGS = ['{"q": ', '"mock"}']
MAX_SKEW = datetime.timedelta(minutes=15)
MAX_BODY = 8 << 20

LOCK = threading.Lock()
SEEN = []
TEMPORARY = {}  # access key id -> (secret, token, expires at)


# ---------------------------------------------------------------- the AWS event stream

def header_bytes(headers):
    out = b""
    for name, value in headers:
        n, v = name.encode(), value.encode()
        out += struct.pack(">B", len(n)) + n + struct.pack(">BH", 7, len(v)) + v
    return out


def frame(headers, payload):
    """One event-stream message: prelude (total, headers length, CRC), headers, payload, CRC."""
    h = header_bytes(headers)
    total = 12 + len(h) + len(payload) + 4
    prelude = struct.pack(">II", total, len(h))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + h + payload
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def event(event_type, payload):
    return frame(
        [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")],
        json.dumps(payload).encode(),
    )


def exception(exception_type, message):
    return frame(
        [(":exception-type", exception_type), (":content-type", "application/json"),
         (":message-type", "exception")],
        json.dumps({"message": message}).encode(),
    )


def self_test():
    """Our frames must decode with botocore's event-stream parser."""
    buf = EventStreamBuffer()
    buf.add_data(event("messageStart", {"role": "assistant"}) + exception("throttlingException", "x"))
    got = [(m.headers[":message-type"], json.loads(m.payload)) for m in buf]
    assert got == [("event", {"role": "assistant"}), ("exception", {"message": "x"})], got


# ---------------------------------------------------------------- SigV4, checked by botocore

AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$"
)


class Denied(Exception):
    def __init__(self, status, kind, message):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def checked(handler, body, service):
    """(the access key id, None) of a correctly signed request, (None, the Denied) otherwise."""
    try:
        return verify(handler, body, service), None
    except Denied as d:
        return None, d


def verify(handler, body, service):
    """The access key id of a correctly signed request; raises Denied otherwise."""
    auth = handler.headers.get("authorization")
    if not auth:
        raise Denied(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    m = AUTH_RE.match(auth)
    if not m:
        raise Denied(403, "IncompleteSignatureException", "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature'.")
    key, day, region, scope_service, signed, signature = m.groups()
    if scope_service != service:
        raise Denied(403, "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'.")
    token = None
    with LOCK:
        temp = TEMPORARY.get(key)
    if key in BASE_KEYS:
        secret = BASE_KEYS[key]
    elif temp:
        secret, token, expires = temp
        if handler.headers.get("x-amz-security-token") != token:
            raise Denied(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
        if datetime.datetime.now(datetime.timezone.utc) >= expires:
            raise Denied(403, "ExpiredTokenException", "The security token included in the request is expired")
    else:
        raise Denied(403, "UnrecognizedClientException", "The security token included in the request is invalid.")
    names = signed.split(";")
    for required in ["host", "x-amz-date"] + (["x-amz-security-token"] if token else []):
        if required not in names:
            raise Denied(403, "InvalidSignatureException", f"'{required}' must be a signed header.")
    amz_date = handler.headers.get("x-amz-date", "")
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise Denied(403, "IncompleteSignatureException", "X-Amz-Date is not a date.")
    if abs(datetime.datetime.now(datetime.timezone.utc) - when) > MAX_SKEW or day != amz_date[:8]:
        raise Denied(403, "InvalidSignatureException", f"Signature expired: {amz_date} is outside the allowed time window.")
    headers = {}
    for name in names:
        values = handler.headers.get_all(name)
        if values is None:
            raise Denied(403, "InvalidSignatureException", f"signed header '{name}' is missing.")
        headers[name] = ",".join(values)
    request = AWSRequest(method=handler.command, url=f"http://{headers['host']}{handler.path}",
                         data=body, headers=headers)
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(key, secret, token), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, signature):
        raise Denied(403, "InvalidSignatureException",
                     "The request signature we calculated does not match the signature you provided. "
                     "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
    return key


# ---------------------------------------------------------------- answers

BLOCKS = {"text", "image", "document", "toolUse", "toolResult", "cachePoint", "reasoningContent"}
INFERENCE = {"maxTokens", "temperature", "topP", "stopSequences"}
CONVERSE_FIELDS = {"messages", "system", "inferenceConfig", "toolConfig", "additionalModelRequestFields",
                   "guardrailConfig", "promptVariables", "requestMetadata", "performanceConfig",
                   "additionalModelResponseFieldPaths"}


def converse_problem(req):
    """What makes a Converse body invalid per the API reference, or None."""
    if set(req) - CONVERSE_FIELDS:
        return f"unknown fields {sorted(set(req) - CONVERSE_FIELDS)}"
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: a non-empty list is required"
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant") or not isinstance(m.get("content"), list) or not m["content"]:
            return f"messages[{i}]: role user|assistant and a non-empty content list are required"
        if i and messages[i - 1]["role"] == m["role"]:
            return "A conversation must alternate between user and assistant roles."
        for b in m["content"]:
            if not isinstance(b, dict) or len(b) != 1 or next(iter(b)) not in BLOCKS:
                return f"messages[{i}]: a content block must be exactly one of {sorted(BLOCKS)}"
            if "image" in b:
                img = b["image"]
                if img.get("format") not in ("png", "jpeg", "gif", "webp"):
                    return f"messages[{i}]: image.format must be png|jpeg|gif|webp"
                try:
                    base64.b64decode(img["source"]["bytes"], validate=True)
                except (KeyError, TypeError, ValueError):
                    return f"messages[{i}]: image.source.bytes must be base64"
            if "toolUse" in b and not (isinstance(b["toolUse"].get("toolUseId"), str)
                                       and isinstance(b["toolUse"].get("name"), str)
                                       and isinstance(b["toolUse"].get("input"), dict)):
                return f"messages[{i}]: toolUse needs toolUseId, name and an input object"
            if "toolResult" in b and not (isinstance(b["toolResult"].get("toolUseId"), str)
                                          and isinstance(b["toolResult"].get("content"), list)):
                return f"messages[{i}]: toolResult needs toolUseId and a content list"
    if messages[0]["role"] != "user":
        return "A conversation must start with a user message."
    system = req.get("system", [])
    if not isinstance(system, list) or any(not isinstance(b, dict) or set(b) - {"text", "cachePoint", "guardContent"} for b in system):
        return "system: a list of {text} blocks"
    inference = req.get("inferenceConfig", {})
    if not isinstance(inference, dict) or set(inference) - INFERENCE:
        return f"inferenceConfig: only {sorted(INFERENCE)}"
    if "maxTokens" in inference and not (isinstance(inference["maxTokens"], int) and inference["maxTokens"] >= 1):
        return "inferenceConfig.maxTokens must be a positive integer"
    tools = req.get("toolConfig")
    if tools is not None:
        specs = tools.get("tools")
        if not isinstance(specs, list) or not specs or any(
                not isinstance(t.get("toolSpec", {}).get("name"), str)
                or not isinstance(t["toolSpec"].get("inputSchema", {}).get("json"), dict) for t in specs):
            return "toolConfig.tools: a list of {toolSpec: {name, inputSchema: {json}}}"
        choice = tools.get("toolChoice")
        if choice is not None and (len(choice) != 1 or next(iter(choice)) not in ("auto", "any", "tool")):
            return "toolConfig.toolChoice must be one of auto, any, tool"
    uses_tools = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    if uses_tools and tools is None:
        return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
    return None


def converse_answer(req, model):
    tools = (req.get("toolConfig") or {}).get("tools") or []
    if "tool" in model and tools:
        name = tools[0]["toolSpec"]["name"]
        content = [{"toolUse": {"toolUseId": "tooluse_mock1", "name": name, "input": json.loads("".join(TOOL_ARGS))}}]
        stop = "tool_use"
    else:
        content = [{"text": "".join(TEXT)}]
        stop = "end_turn"
    return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": stop,
            "usage": USAGE, "metrics": {"latencyMs": 12}}


def converse_events(req, model):
    tools = (req.get("toolConfig") or {}).get("tools") or []
    yield event("messageStart", {"role": "assistant"})
    for piece in TEXT:
        yield event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
    yield event("contentBlockStop", {"contentBlockIndex": 0})
    stop = "end_turn"
    if "tool" in model and tools:
        name = tools[0]["toolSpec"]["name"]
        yield event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_mock1", "name": name}}})
        for piece in TOOL_ARGS:
            yield event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": piece}}})
        yield event("contentBlockStop", {"contentBlockIndex": 1})
        stop = "tool_use"
    if "stream-exception" in model:
        yield exception("modelStreamErrorException", "The model stream failed.")
        return
    yield event("messageStop", {"stopReason": stop})
    yield event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 12}})


def anthropic_usage():
    return {"input_tokens": USAGE["inputTokens"], "output_tokens": USAGE["outputTokens"],
            "cache_creation_input_tokens": USAGE["cacheWriteInputTokens"],
            "cache_read_input_tokens": USAGE["cacheReadInputTokens"]}


def anthropic_message(model):
    return {"id": "msg_bdrk_mock1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "".join(TEXT)}], "stop_reason": "end_turn",
            "stop_sequence": None, "usage": anthropic_usage()}


def anthropic_answer(model, req):
    """The whole InvokeModel answer: text, or a call of the first tool (see the docstring)."""
    out = anthropic_message(model)
    tools = req.get("tools") or []
    last = (req.get("messages") or [{}])[-1].get("content")
    answered = isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last)
    if tools and not answered:
        out["content"].append({"type": "tool_use", "id": "toolu_bdrk_mock1", "name": tools[0]["name"],
                               "input": json.loads("".join(TOOL_ARGS))})
        out["stop_reason"] = "tool_use"
    return out


def anthropic_events(model):
    start = anthropic_message(model)
    start.update(content=[], stop_reason=None, usage=dict(anthropic_usage(), output_tokens=1))
    events = [{"type": "message_start", "message": start},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]
    events += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}} for t in TEXT]
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": USAGE["outputTokens"]}},
               {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                   "inputTokenCount": USAGE["inputTokens"], "outputTokenCount": USAGE["outputTokens"],
                   "invocationLatency": 12, "firstByteLatency": 3}}]
    for e in events:
        yield event("chunk", {"bytes": base64.b64encode(json.dumps(e).encode()).decode()})


def vector(text):
    digest = hashlib.sha256(text.encode()).digest()
    return [round(b / 255.0, 4) for b in digest[:4]]


# ---------------------------------------------------------------- the server

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", secrets.token_hex(8))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def aws_error(self, status, kind, message):
        self.send(status, {"message": message}, headers=[("x-amzn-ErrorType", f"{kind}:http://internal.amazon.com/coral/com.amazon.coral.service/")])

    def sts_error(self, status, code, message):
        xml = (f'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
               f"<Code>{code}</Code><Message>{message}</Message></Error><RequestId>{secrets.token_hex(8)}</RequestId></ErrorResponse>")
        self.send(status, xml.encode(), "text/xml")

    def stream(self, frames):
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-amzn-RequestId", secrets.token_hex(8))
        self.end_headers()
        for f in frames:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(f), f))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def record(self, **fields):
        with LOCK:
            SEEN.append(fields)

    def do_GET(self):
        if self.path == "/_seen":
            with LOCK:
                return self.send(200, SEEN)
        self.aws_error(404, "UnknownOperationException", "Unknown operation")

    def do_DELETE(self):
        if self.path == "/_seen":
            with LOCK:
                SEEN.clear()
            return self.send(200, {})
        self.aws_error(404, "UnknownOperationException", "Unknown operation")

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            return self.aws_error(413, "ValidationException", "Request body too large")
        body = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        if path == "/":
            return self.sts(body)
        parts = path.split("/")
        if len(parts) != 4 or parts[1] != "model":
            return self.aws_error(404, "UnknownOperationException", "Unknown operation")
        model, action = unquote(parts[2]), parts[3]
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        key, denied = checked(self, body, "bedrock")
        verdict = denied.kind if denied else "ok"
        self.record(method="POST", path=self.path, model=model, action=action, service="bedrock",
                    access_key_id=key, signature=verdict, body=parsed,
                    headers={k.lower(): v for k, v in self.headers.items()})
        if denied:
            return self.aws_error(denied.status, denied.kind, denied.message)
        if not isinstance(parsed, dict):
            return self.aws_error(400, "ValidationException", "Malformed input request, please reformat your input and try again.")
        if "fail-throttle" in model:
            return self.aws_error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
        if "fail-500" in model:
            return self.aws_error(500, "InternalServerException", "The server encountered an internal error.")
        handler = {"converse": self.converse, "converse-stream": self.converse,
                   "invoke": self.invoke, "invoke-with-response-stream": self.invoke,
                   "count-tokens": self.count_tokens}.get(action)
        if not handler:
            return self.aws_error(404, "UnknownOperationException", "Unknown operation")
        handler(model, action, parsed)

    def converse(self, model, action, req):
        problem = converse_problem(req)
        if problem:
            return self.aws_error(400, "ValidationException", problem)
        if action == "converse":
            if "garbage" in model:
                return self.send(200, b"<html>not json", "application/json")
            return self.send(200, converse_answer(req, model))
        frames = list(converse_events(req, model))
        if "garbage" in model:
            bad = bytearray(frames[1])
            bad[-1] ^= 0xFF
            frames[1] = bytes(bad)
        if "truncate" in model:
            frames = frames[:3] + [frames[3][: len(frames[3]) // 2]]
        self.stream(frames)

    def invoke(self, model, action, req):
        if model.startswith(("amazon.titan-embed", "cohere.embed")):
            return self.embed(model, action, req)
        if not re.match(r"^((us|eu|apac|global)\.)?anthropic\.", model):
            return self.aws_error(400, "ValidationException", f"The mock serves InvokeModel for anthropic.* and embedding models, not {model}")
        if req.get("anthropic_version") != "bedrock-2023-05-31" or "model" in req or "stream" in req:
            return self.aws_error(400, "ValidationException", "anthropic_version must be bedrock-2023-05-31; model and stream are not allowed")
        if not isinstance(req.get("messages"), list) or not isinstance(req.get("max_tokens"), int):
            return self.aws_error(400, "ValidationException", "messages and max_tokens are required")
        counts = [("X-Amzn-Bedrock-Input-Token-Count", str(USAGE["inputTokens"])),
                  ("X-Amzn-Bedrock-Output-Token-Count", str(USAGE["outputTokens"]))]
        if action == "invoke":
            return self.send(200, anthropic_answer(model, req), headers=counts)
        frames = list(anthropic_events(model))
        if "truncate" in model:
            frames = frames[:3] + [frames[3][:10]]
        self.stream(frames)

    def count_tokens(self, model, action, req):
        if not model.startswith("anthropic."):
            return self.aws_error(400, "ValidationException", "The provided model doesn't support counting tokens.")
        body = req.get("input", {}).get("invokeModel", {}).get("body") if isinstance(req.get("input"), dict) else None
        try:
            invoke = json.loads(base64.b64decode(body, validate=True))
        except (TypeError, ValueError):
            return self.aws_error(400, "ValidationException", "input.invokeModel.body must be a base64 InvokeModel body")
        if set(req) != {"input"} or invoke.get("anthropic_version") != "bedrock-2023-05-31" or "model" in invoke:
            return self.aws_error(400, "ValidationException", "anthropic_version must be bedrock-2023-05-31; model is not allowed")
        if not isinstance(invoke.get("messages"), list) or not isinstance(invoke.get("max_tokens"), int):
            return self.aws_error(400, "ValidationException", "messages and max_tokens are required")
        self.send(200, {"inputTokens": COUNT_PER_MESSAGE * len(invoke["messages"])})

    def embed(self, model, action, req):
        if action != "invoke":
            return self.aws_error(400, "ValidationException", "embedding models are invoked with InvokeModel")
        if model.startswith("amazon.titan-embed"):
            text = req.get("inputText")
            if not isinstance(text, str) or set(req) - {"inputText", "dimensions", "normalize", "embeddingTypes"}:
                return self.aws_error(400, "ValidationException", "Malformed input request: inputText is required")
            if text == "throttle-me":
                return self.aws_error(429, "ThrottlingException", "Too many requests, please wait before trying again.")
            return self.send(200, {"embedding": vector(text), "inputTextTokenCount": TITAN_TOKENS},
                             headers=[("X-Amzn-Bedrock-Input-Token-Count", str(TITAN_TOKENS))])
        texts = req.get("texts")
        if not isinstance(texts, list) or not 0 < len(texts) <= 96 or not isinstance(req.get("input_type"), str):
            return self.aws_error(400, "ValidationException", "Malformed input request: texts (1-96) and input_type are required")
        self.send(200, {"id": secrets.token_hex(8), "embeddings": [vector(t) for t in texts], "texts": texts,
                        "response_type": "embeddings_floats"},
                  headers=[("X-Amzn-Bedrock-Input-Token-Count", str(COHERE_TOKENS * len(texts)))])

    def sts(self, body):
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        key, denied = checked(self, body, "sts")
        verdict = denied.kind if denied else "ok"
        self.record(method="POST", path=self.path, model=None, action=form.get("Action"), service="sts",
                    access_key_id=key, signature=verdict, body=form,
                    headers={k.lower(): v for k, v in self.headers.items()})
        if denied:
            code = {"InvalidSignatureException": "SignatureDoesNotMatch",
                    "UnrecognizedClientException": "InvalidClientTokenId",
                    "ExpiredTokenException": "ExpiredToken"}.get(denied.kind, denied.kind)
            return self.sts_error(denied.status, code, denied.message)
        if form.get("Action") != "AssumeRole" or form.get("Version") != "2011-06-15":
            return self.sts_error(400, "InvalidAction", "Could not find operation " + str(form.get("Action")))
        role, session = form.get("RoleArn", ""), form.get("RoleSessionName", "")
        if not re.match(r"^arn:aws:iam::\d{12}:role/[\w+=,.@/-]+$", role):
            return self.sts_error(400, "ValidationError", "Value at 'roleArn' failed to satisfy constraint")
        if not re.match(r"^[\w+=,.@-]{2,64}$", session):
            return self.sts_error(400, "ValidationError", "Value at 'roleSessionName' failed to satisfy constraint")
        if role.endswith("/needs-external-id") and form.get("ExternalId") != "ext-123":
            return self.sts_error(403, "AccessDenied", f"User: arn:aws:iam::123456789012:user/tollgate is not authorized to perform: sts:AssumeRole on resource: {role}")
        ttl = re.search(r"ttl-(\d+)", session)
        ttl = int(ttl.group(1)) if ttl else int(os.environ.get("BEDROCK_MOCK_STS_TTL", "3600"))
        expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(seconds=ttl)
        access = "ASIAMOCK" + secrets.token_hex(6).upper()
        secret, token = secrets.token_urlsafe(30), base64.b64encode(secrets.token_bytes(48)).decode()
        with LOCK:
            TEMPORARY[access] = (secret, token, expires)
        xml = f"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/{role.rsplit('/', 1)[-1]}/{session}</Arn>
      <AssumedRoleId>AROAMOCK:{session}</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>{access}</AccessKeyId>
      <SecretAccessKey>{secret}</SecretAccessKey>
      <SessionToken>{token}</SessionToken>
      <Expiration>{expires.strftime('%Y-%m-%dT%H:%M:%SZ')}</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>{secrets.token_hex(8)}</RequestId></ResponseMetadata>
</AssumeRoleResponse>"""
        self.send(200, xml.encode(), "text/xml")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    self_test()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
