"""echo (HTTP mode): answers with the request body, and says what it received in X-Echo-* headers."""

import json

from sluice_http import serve


def echo(method, path, query, headers, body):
    out = {
        "X-Echo-Method": method,
        "X-Echo-Path": path,
        "X-Echo-Query": query,
        "X-Echo-Headers": json.dumps({k.lower(): v for k, v in headers.items()}),
    }
    if "Content-Type" in headers:
        out["Content-Type"] = headers["Content-Type"]
    return 200, out, body


serve(echo)
