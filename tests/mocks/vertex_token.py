"""A mock of Google's OAuth2 token endpoint for service accounts (the JWT-bearer grant).

It generates a throwaway RSA service account at start (TEST-ONLY, never written to disk), and
answers POST /token with form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`
only after VERIFYING the assertion with PyJWT (an implementation nobody here wrote): the RS256
signature against the account's public key, the header's `kid`, `iss` = the account's email,
`aud` = this endpoint's URL, `scope` including cloud-platform, `iat`/`exp` present, not expired,
and a lifetime of at most one hour. Failures answer 400 in Google's OAuth error shape
`{"error": "invalid_grant", "error_description": ...}`.

Issued tokens are `ya29.<exp>.<nonce>.<hmac>` with hmac = HMAC-SHA256(--token-secret,
"<exp>.<nonce>") in hex: the Rust Vertex mock (tests/it/mock_gemini.rs) checks them with the
same secret and rejects them once `exp` (unix seconds) has passed, so tests can exercise
refresh with a short --expires-in.

Output: the first stdout line is the port; the second the service-account JSON (one line),
whose token_uri is this endpoint. GET /stats answers {"issued": N, "refused": M}.

    python vertex_token.py --port 0 --expires-in 3600 --token-secret S
"""

import argparse
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--expires-in", type=int, default=3600)
    ap.add_argument("--token-secret", required=True)
    args = ap.parse_args()

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_key = key.public_key()
    kid = secrets.token_hex(20)
    email = "tollgate-test@mock-project.iam.gserviceaccount.com"
    stats = {"issued": 0, "refused": 0}
    lock = threading.Lock()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), None)
    port = server.server_address[1]
    token_uri = f"http://127.0.0.1:{port}/token"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def answer(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def refuse(self, error, description):
            with lock:
                stats["refused"] += 1
            self.answer(400, {"error": error, "error_description": description})

        def do_GET(self):
            if self.path == "/stats":
                with lock:
                    self.answer(200, dict(stats))
            else:
                self.answer(404, {"error": "not_found"})

        def do_POST(self):
            if self.path != "/token":
                return self.answer(404, {"error": "not_found"})
            length = int(self.headers.get("content-length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if form.get("grant_type") != [GRANT]:
                return self.refuse("unsupported_grant_type", "Invalid grant_type.")
            assertion = (form.get("assertion") or [""])[0]
            try:
                header = jwt.get_unverified_header(assertion)
                claims = jwt.decode(
                    assertion,
                    public_key,
                    algorithms=["RS256"],
                    audience=token_uri,
                    issuer=email,
                    options={"require": ["iss", "aud", "exp", "iat", "scope"]},
                )
            except jwt.PyJWTError as e:
                return self.refuse("invalid_grant", f"Invalid JWT: {e}")
            if header.get("kid") != kid or header.get("typ") != "JWT":
                return self.refuse("invalid_grant", "Invalid JWT header (kid/typ).")
            if SCOPE not in str(claims["scope"]).split():
                return self.refuse("invalid_scope", "The cloud-platform scope is missing.")
            if claims["exp"] - claims["iat"] > 3600:
                return self.refuse("invalid_grant", "Invalid JWT: lifetime over one hour.")
            exp = int(time.time()) + args.expires_in
            nonce = secrets.token_hex(8)
            mac = hmac.new(args.token_secret.encode(), f"{exp}.{nonce}".encode(), hashlib.sha256)
            with lock:
                stats["issued"] += 1
            self.answer(
                200,
                {
                    "access_token": f"ya29.{exp}.{nonce}.{mac.hexdigest()}",
                    "expires_in": args.expires_in,
                    "token_type": "Bearer",
                },
            )

    server.RequestHandlerClass = Handler
    account = {
        "type": "service_account",
        "project_id": "mock-project",
        "private_key_id": kid,
        "private_key": private_pem,
        "client_email": email,
        "client_id": "100000000000000000000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    print(port)
    print(json.dumps(account))
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
