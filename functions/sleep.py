"""sleep (HTTP mode): a slow job in miniature. Sleeps ?seconds=N (or the body's number) seconds,
at most 600, then says how long it slept."""

import time
from urllib.parse import parse_qs

from sluice_http import serve


def slow(method, path, query, headers, body):
    raw = parse_qs(query).get("seconds", [body.decode(errors="replace").strip() or "1"])[0]
    try:
        seconds = min(max(float(raw), 0.0), 600.0)
    except ValueError:
        return 400, {"Content-Type": "text/plain"}, f"seconds {raw!r} is not a number\n".encode()
    time.sleep(seconds)
    return 200, {"Content-Type": "text/plain"}, f"slept {seconds:g}s\n".encode()


serve(slow)
