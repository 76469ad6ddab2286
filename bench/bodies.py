#!/usr/bin/env python3
"""Memory under large bodies: what many concurrent 16 MiB calls cost the gateway, and what it
gives back afterwards (issue 9, finding 6).

Starts `sluice up` (release build) with the sample echo function, then:
- sync: --concurrency POSTs of --size bytes to /function/echo at once;
- async: the same number of submissions to /async-function/echo at once, then waits until the
  queue has run them all;
sampling the gateway's resident memory (VmRSS) every 20 ms throughout, and once more --settle
seconds after each burst. Prints the peak and settled RSS, the answers by status, and the
database's size after the async burst. Given several binaries (--sluice a b), measures each
in turn in the same run, for a side-by-side comparison.

    cargo build --release && python3 bench/bodies.py
"""

import argparse
import collections
import concurrent.futures
import os
import tempfile
import threading
import time
import urllib.error

from common import ROOT, deploy, get_json, request, start


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler:
    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def call(url, body):
    try:
        return request(url, body)[0]
    except urllib.error.HTTPError as e:
        return e.code
    except OSError as e:
        return type(e).__name__


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sluice", nargs="+", default=[os.path.join(ROOT, "target/release/sluice")])
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--size", type=int, default=16 * 1024 * 1024)
    ap.add_argument("--settle", type=float, default=10.0)
    args = ap.parse_args()
    body = b"x" * args.size
    for sluice in args.sluice:
        print(f"== {sluice}")
        measure(sluice, args, body)


def measure(sluice, args, body):
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        log = open(os.path.join(tmp, "sluice.log"), "w")
        proc, base = start(sluice, data, log)
        try:
            deploy(base, {
                "service": "echo", "envProcess": "python3 -u echo.py", "envVars": {"mode": "http"},
                "annotations": {"com.sluice.workdir": os.path.join(ROOT, "functions")},
            })
            request(f"{base}/function/echo", b"warm")
            idle = rss_mib(proc.pid)
            print(f"idle, echo deployed: {idle:.0f} MiB")
            for route in ["function", "async-function"]:
                url = f"{base}/{route}/echo"
                with Sampler(proc.pid) as sampler, \
                        concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                    statuses = collections.Counter(pool.map(lambda _: call(url, body),
                                                            range(args.concurrency)))
                    if route == "async-function":
                        while get_json(f"{base}/system/calls?status=queued")["calls"] or \
                                get_json(f"{base}/system/calls?status=running")["calls"]:
                            time.sleep(0.2)
                time.sleep(args.settle)
                print(f"{args.concurrency} x {args.size >> 20} MiB to /{route}/echo: "
                      f"answers {dict(statuses)}, peak RSS {sampler.peak:.0f} MiB, "
                      f"{args.settle:.0f} s later {rss_mib(proc.pid):.0f} MiB")
            size = sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data)
                       if f.startswith("sluice.db"))
            print(f"database after the async burst: {size / (1 << 20):.0f} MiB")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
