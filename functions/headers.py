"""headers (HTTP mode): answers with the request headers it received, as a JSON object with
lower-case names, after sleeping ?seconds=N (at most 60; none by default). What a function sees
of a call (its trace context, its request id), and a call slow enough to stop a worker under."""

import json
import time
from urllib.parse import parse_qs

from sluice_http import serve


def headers(method, path, query, received, body):
    raw = parse_qs(query).get("seconds", ["0"])[0]
    try:
        seconds = min(max(float(raw), 0.0), 60.0)
    except ValueError:
        return 400, {"Content-Type": "text/plain"}, f"seconds {raw!r} is not a number\n".encode()
    time.sleep(seconds)
    seen = {k.lower(): v for k, v in received.items()}
    return 200, {"Content-Type": "application/json"}, json.dumps(seen).encode()


serve(headers)
