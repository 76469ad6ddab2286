"""A callback receiver for trying async calls: prints every callback POSTed to it.

    python3 functions/receiver.py --port 9000 [--count N]

With --count it exits after N callbacks (so a pasted quickstart ends by itself).
"""

import argparse
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--port", type=int, default=9000)
parser.add_argument("--count", type=int, default=0, help="exit after this many callbacks")
args = parser.parse_args()
received = 0


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        global received
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()
        received += 1
        print(f"callback {received}: POST {self.path}")
        for key in ("X-Call-Id", "X-Function-Name", "X-Function-Status", "X-Duration-Seconds"):
            print(f"  {key}: {self.headers.get(key)}")
        print(f"  body: {body.decode(errors='replace')!r}", flush=True)

    def log_message(self, fmt, *a):
        pass


server = HTTPServer(("127.0.0.1", args.port), Receiver)
print(f"waiting for callbacks on http://127.0.0.1:{args.port}/", file=sys.stderr, flush=True)
while args.count == 0 or received < args.count:
    server.handle_request()
