"""A tiny HTTP-mode function server for the sample functions (standard library only).

An HTTP-mode function is a long-running server on the port Sluice passes in $PORT. This module
answers Sluice's readiness probe on /_/health and hands every other request to a handler:
handler(method, path, query, headers, body) -> (status, headers, body).
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def serve(handler):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; without this, Nagle's algorithm holds the
        # body back until the peer's delayed ACK (about 40 ms a response).
        disable_nagle_algorithm = True

        def _dispatch(self):
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if url.path == "/_/health":
                status, headers, out = 200, {}, b"OK"
            else:
                status, headers, out = handler(
                    self.command, url.path, url.query, self.headers, body
                )
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

        def log_message(self, fmt, *args):  # keep replica logs for the function's own lines
            pass

    port = int(os.environ["PORT"])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    server.serve_forever()
