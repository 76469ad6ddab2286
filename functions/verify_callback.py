"""Checks that a callback came from Sluice: the README's procedure, standard library only.

Sluice started with --callback-signing-key KEY signs every callback it sends:
    X-Sluice-Timestamp: <Unix seconds when it was signed>
    X-Sluice-Signature: v1=<hex HMAC-SHA256 under KEY of "<timestamp>.<body>">

As a command (the body on stdin; exits 0 if the callback is genuine and fresh, 1 if not):
    python3 verify_callback.py KEY TIMESTAMP SIGNATURE < body
"""

import hashlib
import hmac
import sys
import time


def verify(key: bytes, timestamp: str, signature: str, body: bytes, max_age: int = 300) -> bool:
    """True if `signature` is Sluice's for `timestamp` and `body`, signed within `max_age` s."""
    try:
        signed_at = int(timestamp)
    except ValueError:
        return False
    if abs(time.time() - signed_at) > max_age:
        return False  # an old callback replayed
    expected = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest("v1=" + expected, signature)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    key, timestamp, signature = sys.argv[1:]
    ok = verify(key.encode(), timestamp, signature, sys.stdin.buffer.read())
    print("genuine" if ok else "NOT genuine")
    sys.exit(0 if ok else 1)
