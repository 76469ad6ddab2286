"""burn (HTTP mode): uses about a third of a core in a thread of its own, with or without
requests (work of its own, as a function that scales on CPU might have); answers "ok"."""

import threading
import time

from sluice_http import serve


def burn():
    while True:
        busy_until = time.monotonic() + 0.03
        while time.monotonic() < busy_until:
            pass
        time.sleep(0.07)


threading.Thread(target=burn, daemon=True).start()
serve(lambda method, path, query, headers, body: (200, {}, b"ok"))
