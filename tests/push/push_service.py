"""A local Web Push service for end-to-end tests: the browser's push service
and the browser in one process, on 127.0.0.1.

It is an *independent* implementation of the receiving side of Web Push and
shares no code with the Backchannel server (Rust, `web-push` crate):

- RFC 8030 (the push protocol): subscriptions have an endpoint URL; a push is
  `POST <endpoint>` with a `TTL` header and optional `Urgency` and `Topic`.
- RFC 8291 (message encryption, `Content-Encoding: aes128gcm`): each
  subscription has its own P-256 key pair and 16-byte auth secret, like a
  browser's; bodies are decrypted with the PyPI package `http-ece`.
- RFC 8292 (VAPID): `Authorization: vapid t=<JWT>, k=<public key>`; the ES256
  signature is verified with the PyPI package `py-vapid` against `k`, which must
  be the application server key the subscription was made with, and the claims
  are checked (`aud` is exactly this service's origin, `exp` in the future and at
  most 24 h ahead, `sub` a mailto: or http(s): URL).

Control API (JSON), for the tests:
  POST   /control/subscriptions              {"application_server_key": b64url}
         -> 201 {"id", "endpoint", "keys": {"p256dh", "auth"}}
  POST   /control/subscriptions/<id>/responses
         [{"status": 503, "retry_after": "2", "delay_ms": 0, "sticky": false}, ...]
         queued answers for the next valid pushes (default: 201 + Location)
  GET    /control/pushes[?subscription=<id>]  every push attempt, in arrival order
  GET    /control/errors                      only the attempts with an error
  DELETE /control/pushes                      forget the recorded attempts

An invalid push (bad headers, VAPID or encryption) is answered 400/401/403/404/
413 and recorded with an "error"; it does not consume a scripted answer.

Usage: push_service.py [--port N] [--exit-on-stdin-eof]
Prints exactly one line "listening on <port>" on stdout once it accepts.
"""

import argparse
import base64
import json
import os
import re
import secrets
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import http_ece
import py_vapid.jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

MAX_BODY = 4096  # RFC 8030 push services accept at least 4096 bytes; we accept no more
MAX_EXP_AHEAD = 24 * 60 * 60  # RFC 8292 section 2: exp no more than 24 hours ahead


def b64url_encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text):
    text = text.strip()
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def p256_public_key(b64):
    """The uncompressed P-256 point in b64url `b64` as a key, or ValueError."""
    raw = b64url_decode(b64)
    if len(raw) != 65 or raw[0] != 4:
        raise ValueError("not a base64url uncompressed P-256 point (65 bytes, 0x04 first)")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


class PushError(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.subscriptions = {}  # id -> {"server_key", "private_key", "auth", "responses"}
        self.pushes = []


STATE = State()


def parse_vapid(header):
    """`vapid t=<jwt>, k=<key>` -> (jwt, k). Parameters are comma-separated,
    whitespace around them is optional (the Rust and npm encoders send ", ")."""
    if not header:
        raise PushError(401, "missing Authorization header")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise PushError(401, f"Authorization scheme is {scheme!r}, not 'vapid'")
    params = {}
    for part in rest.split(","):
        name, eq, value = part.strip().partition("=")
        if eq:
            params[name.strip().lower()] = value.strip()
    if "t" not in params or "k" not in params:
        raise PushError(401, "Authorization lacks t= or k=")
    return params["t"], params["k"]


def verify_vapid(header, sub, origin):
    """Checks the VAPID header of a push to `sub`; returns the verified claims.
    Raises PushError, with the claims attached when the signature was good."""
    token, key = parse_vapid(header)
    try:
        same_key = b64url_decode(key) == b64url_decode(sub["server_key"])
    except ValueError:
        same_key = False
    if not same_key:
        raise PushError(403, "VAPID k is not the subscription's application server key")
    try:
        jwt_header = json.loads(b64url_decode(token.split(".")[0]))
    except ValueError:
        raise PushError(401, "JWT header is not base64url JSON")
    alg = jwt_header.get("alg") if isinstance(jwt_header, dict) else None
    if alg != "ES256":
        raise PushError(401, f"JWT alg is {alg!r}, not ES256")
    try:
        claims = py_vapid.jwt.decode(token, key)  # verifies the ES256 signature
    except Exception as e:  # InvalidSignature, or a malformed token
        raise PushError(401, f"JWT signature does not verify with k ({type(e).__name__})")
    if not isinstance(claims, dict):
        raise PushError(401, "JWT claims are not a JSON object")
    problem = None
    now = time.time()
    exp = claims.get("exp")
    sub_claim = claims.get("sub")
    if claims.get("aud") != origin:
        problem = f"JWT aud is {claims.get('aud')!r}, expected {origin!r}"
    elif not isinstance(exp, (int, float)) or isinstance(exp, bool):
        problem = f"JWT exp is {exp!r}, not a number"
    elif exp <= now:
        problem = f"JWT exp {exp} is in the past (now {int(now)})"
    elif exp > now + MAX_EXP_AHEAD:
        problem = f"JWT exp {exp} is more than 24 h ahead (now {int(now)})"
    elif not isinstance(sub_claim, str) or not sub_claim.startswith(("mailto:", "https://", "http://")):
        problem = f"JWT sub is {sub_claim!r}, not a mailto: or http(s): URL"
    if problem:
        err = PushError(401, problem)
        err.claims = claims
        raise err
    return claims


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer has a Content-Length
    server_version = "LocalPushService/1"

    def log_message(self, fmt, *args):
        if os.environ.get("PUSH_SERVICE_LOG"):
            sys.stderr.write("push_service: " + (fmt % args) + "\n")

    # ---- plumbing

    def origin(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def json_body(self):
        try:
            return json.loads(self.read_body() or b"null")
        except ValueError:
            return None

    # ---- routes

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/control/pushes":
            wanted = parse_qs(url.query).get("subscription", [None])[0]
            with STATE.lock:
                records = [p for p in STATE.pushes if wanted is None or p["subscription"] == wanted]
            return self.send(200, records)
        if url.path == "/control/errors":
            with STATE.lock:
                records = [p for p in STATE.pushes if p["error"] is not None]
            return self.send(200, records)
        self.send(404, {"error": "no such route"})

    def do_DELETE(self):
        self.read_body()
        if urlsplit(self.path).path == "/control/pushes":
            with STATE.lock:
                STATE.pushes.clear()
            return self.send(204)
        self.send(404, {"error": "no such route"})

    def do_POST(self):
        parts = urlsplit(self.path).path.strip("/").split("/")
        if parts == ["control", "subscriptions"]:
            return self.create_subscription(self.json_body())
        if len(parts) == 4 and parts[:2] == ["control", "subscriptions"] and parts[3] == "responses":
            return self.add_responses(parts[2], self.json_body())
        if len(parts) == 2 and parts[0] == "push":
            return self.push(parts[1])
        self.read_body()
        self.send(404, {"error": "no such route"})

    def create_subscription(self, body):
        key = body.get("application_server_key") if isinstance(body, dict) else None
        try:
            p256_public_key(key if isinstance(key, str) else "")
        except ValueError as e:
            return self.send(400, {"error": f"application_server_key: {e}"})
        private_key = ec.generate_private_key(ec.SECP256R1())
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        auth = secrets.token_bytes(16)
        sub_id = secrets.token_hex(12)
        with STATE.lock:
            STATE.subscriptions[sub_id] = {
                "server_key": key.strip(),
                "private_key": private_key,
                "auth": auth,
                "responses": [],
            }
        self.send(201, {
            "id": sub_id,
            "endpoint": f"{self.origin()}/push/{sub_id}",
            "keys": {"p256dh": b64url_encode(public), "auth": b64url_encode(auth)},
        })

    def add_responses(self, sub_id, body):
        if not isinstance(body, list) or not all(
            isinstance(r, dict) and isinstance(r.get("status"), int) for r in body
        ):
            return self.send(400, {"error": "expected a JSON array of {status, ...}"})
        with STATE.lock:
            sub = STATE.subscriptions.get(sub_id)
            if sub is None:
                return self.send(404, {"error": "no such subscription"})
            sub["responses"].extend(body)
            queued = len(sub["responses"])
        self.send(200, {"queued": queued})

    def push(self, sub_id):
        received_at = int(time.time() * 1000)
        body = self.read_body()
        h = self.headers
        ttl_text = h.get("TTL")
        ttl = int(ttl_text) if ttl_text is not None and re.fullmatch(r"[0-9]+", ttl_text.strip()) else None
        record = {
            "subscription": sub_id, "status": None, "ttl": ttl,
            "urgency": h.get("Urgency"), "topic": h.get("Topic"),
            "payload": None, "claims": None, "error": None, "received_at": received_at,
        }
        with STATE.lock:
            sub = STATE.subscriptions.get(sub_id)
        answer = None
        try:
            if sub is None:
                raise PushError(404, "no such subscription")
            if h.get("Content-Encoding", "").strip().lower() != "aes128gcm":
                raise PushError(400, f"Content-Encoding is {h.get('Content-Encoding')!r}, not aes128gcm")
            if ttl is None:
                raise PushError(400, f"TTL header is {ttl_text!r}, not a non-negative integer")
            if len(body) > MAX_BODY:
                raise PushError(413, f"body is {len(body)} bytes, more than {MAX_BODY}")
            record["claims"] = verify_vapid(h.get("Authorization"), sub, self.origin())
            try:
                plaintext = http_ece.decrypt(
                    body, private_key=sub["private_key"], auth_secret=sub["auth"], version="aes128gcm"
                )
            except Exception as e:
                raise PushError(400, f"aes128gcm decryption failed: {e}")
            try:
                record["payload"] = json.loads(plaintext.decode("utf-8"))
            except ValueError:
                raise PushError(400, f"decrypted payload is not UTF-8 JSON: {plaintext[:80]!r}")
        except Exception as e:  # a PushError, or a push malformed in a way not foreseen
            if not isinstance(e, PushError):
                e = PushError(400, f"malformed push: {e!r}")
            record["status"], record["error"] = e.status, e.reason
            record["claims"] = getattr(e, "claims", record["claims"])
            answer = {"status": e.status}
        if answer is None:  # a valid push: the next scripted answer, or 201
            with STATE.lock:
                queue = sub["responses"]
                answer = queue[0] if queue else {"status": 201}
                if queue and not answer.get("sticky"):
                    queue.pop(0)
            record["status"] = answer["status"]
        with STATE.lock:
            STATE.pushes.append(record)
        if record["error"]:
            sys.stderr.write(f"push_service: refused push to {sub_id}: {record['error']}\n")
        if answer.get("delay_ms"):
            time.sleep(answer["delay_ms"] / 1000)
        headers = {}
        if answer.get("retry_after") is not None:
            headers["Retry-After"] = str(answer["retry_after"])
        if 200 <= answer["status"] < 300:
            headers["Location"] = f"{self.origin()}/message/{uuid.uuid4()}"
        if record["error"]:  # the shape autopush answers with (the Rust crate parses it)
            reason = self.responses.get(answer["status"], ("error",))[0]
            error = {"code": answer["status"], "errno": 999, "error": reason, "message": record["error"]}
            self.send(answer["status"], error, headers)
        else:
            self.send(answer["status"], None, headers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--exit-on-stdin-eof", action="store_true",
                        help="exit when standard input closes (the parent died)")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.exit_on_stdin_eof:
        def watch():
            while sys.stdin.buffer.read(4096):
                pass
            os._exit(0)
        threading.Thread(target=watch, daemon=True).start()
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
