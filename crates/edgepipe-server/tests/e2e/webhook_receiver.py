"""A webhook receiver for the case notification tests: verifies each request's
X-Edgepipe-Signature (HMAC-SHA256 of the body with the shared secret, using Python's own hmac
module) and appends one JSON line per notification to OUT (digests are flattened: one line per
notification inside, with the digest's key). Usage: webhook_receiver.py PORT SECRET OUT"""
import hashlib
import hmac
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, SECRET, OUT = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        sig = self.headers.get("X-Edgepipe-Signature", "")
        want = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        ok = hmac.compare_digest(sig, want)
        doc = json.loads(body)
        outer = self.headers.get("X-Edgepipe-Idempotency-Key", "")
        items = doc["notifications"] if doc.get("event") == "digest" else [doc]
        with open(OUT, "a") as f:
            for n in items:
                f.write(json.dumps({
                    "key": n["idempotency_key"], "event": n["event"], "case_id": n["case"]["id"],
                    "device": n["case"]["device_id"], "signature_ok": ok, "request_key": outer,
                }) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
