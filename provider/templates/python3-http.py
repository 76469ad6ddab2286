# Sluice's runner for OpenFaaS's python3-http template, without containers: it serves
# handler.handle(event, context) from the function's handler directory (its working
# directory) on $PORT, as the template's Flask server does. Standard library only; a
# requirements.txt is installed into a virtual environment of the function's own first.
import fcntl
import hashlib
import http.server
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import types
import urllib.parse

HANDLER_DIR = os.getcwd()
MAX_BODY = int(os.environ.get("SLUICE_MAX_BODY_BYTES", str(16 * 1024 * 1024)))


def requirements():
    path = os.path.join(HANDLER_DIR, "requirements.txt")
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    wanted = [l for l in text.decode().splitlines() if l.strip() and not l.strip().startswith("#")]
    return text if wanted else None


def in_own_venv():
    """Re-runs this runner in a virtual environment with the handler's requirements, made
    (once per set of requirements, under a lock) in $SLUICE_VENV_DIR."""
    text = requirements()
    if text is None or os.environ.get("SLUICE_IN_VENV") == "1":
        return
    base = os.environ.get("SLUICE_VENV_DIR") or os.path.join(tempfile.gettempdir(), "sluice-venvs")
    os.makedirs(base, mode=0o700, exist_ok=True)
    prefix = hashlib.sha256(HANDLER_DIR.encode()).hexdigest()[:12]
    key = hashlib.sha256(text).hexdigest()[:12]
    venv = os.path.join(base, f"{prefix}-{key}")
    python = os.path.join(venv, "bin", "python")
    with open(os.path.join(base, prefix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(venv, ".complete")):
            shutil.rmtree(venv, ignore_errors=True)
            print(f"installing requirements.txt into {venv}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run(
                [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                 "-r", os.path.join(HANDLER_DIR, "requirements.txt")],
                check=True, stdout=sys.stderr)
            open(os.path.join(venv, ".complete"), "w").close()
            # Environments of earlier requirements of this handler are not needed any more.
            for old in os.listdir(base):
                if old.startswith(prefix + "-") and old != f"{prefix}-{key}":
                    shutil.rmtree(os.path.join(base, old), ignore_errors=True)
    env = dict(os.environ, SLUICE_IN_VENV="1")
    os.execve(python, [python, "-u", __file__], env)


def limit_memory():
    """limits.memory ($SLUICE_MEMORY_LIMIT, bytes), as the serving process's data limit: set
    here, after the requirements are installed (pip is not held to it). Threads' stacks count
    towards it, so they are kept small."""
    limit = os.environ.get("SLUICE_MEMORY_LIMIT")
    if limit:
        threading.stack_size(512 * 1024)
        resource.setrlimit(resource.RLIMIT_DATA, (int(limit), int(limit)))


class Headers(dict):
    """Request headers, looked up whatever their case (as Flask's)."""

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)

    def __contains__(self, key):
        return super().__contains__(key.lower())


class Query(dict):
    """The query's first value per key, and getlist for all (as Flask's request.args)."""

    def __init__(self, pairs):
        super().__init__()
        self._all = {}
        for k, v in pairs:
            self._all.setdefault(k, []).append(v)
            self.setdefault(k, v)

    def getlist(self, key):
        return list(self._all.get(key, []))


class Event:
    def __init__(self, body, headers, method, query, path):
        self.body = body
        self.headers = headers
        self.method = method
        self.query = query
        self.path = path


class Context:
    def __init__(self):
        self.hostname = os.getenv("HOSTNAME", "localhost")


def encode(body, content_type):
    """A body as the template's Flask would send it, with its default content type."""
    if body is None:
        return b"", content_type or "text/html; charset=utf-8"
    if isinstance(body, (dict, list)):
        return json.dumps(body).encode() + b"\n", content_type or "application/json"
    if isinstance(body, (bytes, bytearray)):
        return bytes(body), content_type or "text/html; charset=utf-8"
    return str(body).encode(), content_type or "text/html; charset=utf-8"


def respond(result):
    """(status, headers, body) from what handle returned, as the template formats it."""
    if result is None:
        return 200, [], b""
    if isinstance(result, dict):
        status = int(result.get("statusCode", 200))
        headers = result.get("headers") or {}
        headers = list(headers.items()) if isinstance(headers, dict) else list(headers)
        body = result.get("body", "")
        if isinstance(body, dict):
            body, ctype = encode(body, None)
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.append(("Content-Type", ctype))
        elif body is None:
            body = b""
        else:
            body = str(body).encode() if not isinstance(body, (bytes, bytearray)) else bytes(body)
        return status, headers, body
    status, headers = 200, []
    if isinstance(result, tuple):
        result, status = result[0], int(result[1]) if len(result) > 1 else 200
    body, ctype = encode(result, None)
    return status, headers + [("Content-Type", ctype)], body


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sluice-python3-http"

    def log_message(self, *args):
        pass

    def _serve(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/_/health":
            return self._send(200, [("Content-Type", "text/plain")], b"OK")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if length < 0 or length > MAX_BODY or chunked:
            # The body is not read: the connection cannot carry another request after it.
            self.close_connection = True
            status, why = (413, b"request body too large") if length > MAX_BODY else (400, b"bad body")
            return self._send(status, [("Content-Type", "text/plain"), ("Connection", "close")], why)
        body = self.rfile.read(length) if length else b""
        headers = Headers((k.lower(), v) for k, v in self.headers.items())
        query = Query(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        event = Event(body, headers, self.command, query, url.path or "/")
        try:
            result = handler.handle(event, Context())
            status, out_headers, out = respond(result)
        except Exception as e:  # the template's server answers 500 and logs it
            import traceback
            traceback.print_exc()
            status, out_headers, out = 500, [("Content-Type", "text/plain")], str(e).encode()
        self._send(status, out_headers, out)

    def _send(self, status, headers, body):
        self.send_response(status)
        names = set()
        for k, v in headers:
            if k.lower() in ("content-length", "transfer-encoding", "connection"):
                continue
            names.add(k.lower())
            self.send_header(k, str(v))
        if "content-type" not in names:
            self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve


if __name__ == "__main__":
    in_own_venv()
    # The handler is imported as the template imports it: `from function import handler`,
    # the handler directory being the package `function`, so its relative imports work.
    package = types.ModuleType("function")
    package.__path__ = [HANDLER_DIR]
    sys.modules["function"] = package
    handler = importlib.import_module("function.handler")
    limit_memory()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    server.daemon_threads = True
    print(f"python3-http listening on port {os.environ['PORT']}", flush=True)
    server.serve_forever()
