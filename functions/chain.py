"""chain (HTTP mode): answers with the request body and names the next hop in X-Callback-Url
(from $NEXT_URL), so a callback of an async call to it submits another async call. For trying
callback chains, and that a chain which loops back is cut off."""

import os

from sluice_http import serve


def chain(method, path, query, headers, body):
    out = {"Content-Type": "text/plain"}
    if os.environ.get("NEXT_URL"):
        out["X-Callback-Url"] = os.environ["NEXT_URL"]
    return 200, out, body


serve(chain)
