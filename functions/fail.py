"""fail (HTTP mode): answers with the status asked for in ?status=N (or the body), 500 by default."""

from urllib.parse import parse_qs

from sluice_http import serve


def fail(method, path, query, headers, body):
    raw = parse_qs(query).get("status", [body.decode(errors="replace").strip() or "500"])[0]
    try:
        status = int(raw)
        if not 200 <= status <= 599:
            raise ValueError
    except ValueError:
        return 400, {"Content-Type": "text/plain"}, f"status {raw!r} is not 200-599\n".encode()
    return status, {"Content-Type": "text/plain"}, f"failing with {status} as asked\n".encode()


serve(fail)
