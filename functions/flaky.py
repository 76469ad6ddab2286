"""flaky (HTTP mode): fails the first ?fail=N calls for each ?key=K with ?status=S (503 by
default), optionally with ?retry_after=SECONDS, then succeeds. For trying retries."""

import threading
from urllib.parse import parse_qs

from sluice_http import serve

seen = {}
lock = threading.Lock()


def flaky(method, path, query, headers, body):
    q = {k: v[0] for k, v in parse_qs(query).items()}
    key = q.get("key", "")
    with lock:
        seen[key] = seen.get(key, 0) + 1
        count = seen[key]
    try:
        fail, status = int(q.get("fail", "0")), int(q.get("status", "503"))
    except ValueError:
        return 400, {"Content-Type": "text/plain"}, b"fail and status must be numbers\n"
    if count <= fail:
        out = {"Content-Type": "text/plain"}
        if "retry_after" in q:
            out["Retry-After"] = q["retry_after"]
        return status, out, f"call {count} for {key!r} fails with {status}\n".encode()
    return 200, {"Content-Type": "text/plain"}, f"call {count} for {key!r} succeeds\n".encode()


serve(flaky)
