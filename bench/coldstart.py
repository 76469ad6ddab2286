#!/usr/bin/env python3
"""Cold-start benchmark: how long a request to a function at zero replicas takes to answer.

Starts `sluice up` (the binary given with --sluice, default target/release/sluice) on a free
port with a temporary data dir, deploys the sample HTTP echo function with scale-to-zero after
--idle seconds, then --samples times: waits until the function is at zero, times one request
(cold), then one more on the now-warm replica (warm). Once more with --burst concurrent requests
at zero. For comparison, the same number of times, echo.py started alone (outside Sluice) and
polled until it answers. Prints p50/p99 of each and their ratios, measured side by side in one
run.

    cargo build --release && python3 bench/coldstart.py
"""

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import tempfile
import time

from common import ROOT, deploy, get_json, request, start


def percentile(values, p):
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def wait_for_zero(base, deadline_s=120):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        f = get_json(f"{base}/system/function/echo")
        if f["replicas"] == 0 and f["availableReplicas"] == 0:
            return
        time.sleep(0.05)
    raise SystemExit("echo did not go to zero")


def timed_call(url, body):
    start = time.perf_counter()
    status, got = request(url, body)
    elapsed = time.perf_counter() - start
    if status != 200 or got != body:
        raise SystemExit(f"bad answer {status} {got!r}")
    return elapsed * 1000


def bare_start_ms(port):
    """The function's own start-up, outside Sluice: spawn echo.py, poll its health every ms."""
    env = {"PATH": os.environ["PATH"], "PORT": str(port)}
    start = time.perf_counter()
    proc = subprocess.Popen(["python3", "-u", "echo.py"], cwd=os.path.join(ROOT, "functions"),
                            env=env, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                request(f"http://127.0.0.1:{port}/_/health", method="GET")
                return (time.perf_counter() - start) * 1000
            except OSError:
                time.sleep(0.001)
    finally:
        proc.terminate()
        proc.wait()


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target/release/sluice"))
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--idle", default="1s", help="com.openfaas.scale.zero-duration")
    ap.add_argument("--burst", type=int, default=50)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        log = open(os.path.join(tmp, "sluice.log"), "w")
        proc, base = start(args.sluice, os.path.join(tmp, "data"), log)
        try:
            deployment = {
                "service": "echo",
                "image": "sluice/echo:latest",
                "envProcess": "python3 -u echo.py",
                "envVars": {"mode": "http"},
                "labels": {
                    "com.openfaas.scale.zero": "true",
                    "com.openfaas.scale.zero-duration": args.idle,
                },
                "annotations": {"com.sluice.workdir": os.path.join(ROOT, "functions")},
            }
            deploy(base, deployment)
            url = f"{base}/function/echo"
            cold, warm = [], []
            for i in range(args.samples):
                wait_for_zero(base)
                body = f"sample {i}".encode()
                cold.append(timed_call(url, body))
                warm.append(timed_call(url, body))
            bare = [bare_start_ms(free_port()) for _ in range(args.samples)]
            wait_for_zero(base)
            with concurrent.futures.ThreadPoolExecutor(args.burst) as pool:
                burst = list(pool.map(lambda i: timed_call(url, f"burst {i}".encode()), range(args.burst)))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    def line(name, values):
        return (f"{name:<28} n={len(values):<4} p50={statistics.median(values):8.1f} ms"
                f"  p99={percentile(values, 99):8.1f} ms")

    print(line("cold (1 request at zero)", cold))
    print(line("warm (next request)", warm))
    print(line("echo.py alone: start→ready", bare))
    print(line(f"cold burst ({args.burst} at zero)", burst))
    print(f"cold/warm p50 ratio: {statistics.median(cold) / statistics.median(warm):.1f}x")
    print(f"cold p50 over the function's own start-up: "
          f"+{statistics.median(cold) - statistics.median(bare):.1f} ms "
          f"({statistics.median(cold) / statistics.median(bare):.2f}x)")


if __name__ == "__main__":
    main()
