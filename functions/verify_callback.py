"""Checks that a callback came from Sluice: the README's procedure, standard library only.

Sluice started with --callback-signing-key KEY signs every callback it sends:
    X-Sluice-Timestamp: <Unix seconds when it was signed>
    X-Sluice-Signature: v1=<hex HMAC-SHA256 under KEY of the signed message>
where the signed message is the timestamp, X-Call-Id, X-Function-Name and X-Function-Status,
each followed by a newline, then the body.

As a command: the key in $SLUICE_CALLBACK_SIGNING_KEY, the callback's headers as a JSON object
in the argument, the body on stdin; exits 0 if the callback is genuine and fresh, 1 if not:
    python3 verify_callback.py '{"X-Call-Id": "...", ...}' < body
"""

import hashlib
import hmac
import json
import os
import sys
import time


def verify(key: bytes, headers: dict, body: bytes, max_age: int = 300) -> bool:
    """True if the callback (its headers and body) was signed by Sluice within `max_age` s."""
    h = {name.lower(): value for name, value in headers.items()}
    timestamp = h.get("x-sluice-timestamp", "")
    try:
        signed_at = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - signed_at) > max_age:
        return False  # an old callback replayed
    signed = "".join(
        f"{part}\n"
        for part in (
            timestamp,
            h.get("x-call-id", ""),
            h.get("x-function-name", ""),
            h.get("x-function-status", ""),
        )
    )
    expected = hmac.new(key, signed.encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("v1=" + expected, h.get("x-sluice-signature", ""))


if __name__ == "__main__":
    key = os.environ.get("SLUICE_CALLBACK_SIGNING_KEY", "")
    if len(sys.argv) != 2 or not key:
        sys.exit(__doc__)
    ok = verify(key.encode(), json.loads(sys.argv[1]), sys.stdin.buffer.read())
    print("genuine" if ok else "NOT genuine")
    sys.exit(0 if ok else 1)
