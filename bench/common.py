"""What the benchmarks share: starting a release `sluice up` with known admin credentials, and
requests to it (standard library only)."""

import base64
import json
import os
import secrets
import subprocess
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSWORD = secrets.token_hex(16)
AUTH = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()


def request(url, body=None, method="POST", headers=None):
    """One request; management requests (`/system/...`) carry the admin's credentials."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if "/system/" in url:
        req.add_header("Authorization", AUTH)
        if body is not None:
            req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, r.read()


def get_json(url):
    return json.loads(request(url, method="GET")[1])


def start(sluice, data_dir, log, *args):
    """Starts `sluice up` on a free port; returns the process and its base URL."""
    env = dict(os.environ, SLUICE_ADMIN_PASSWORD=PASSWORD)
    proc = subprocess.Popen(
        [sluice, "up", "--listen", "127.0.0.1:0", "--data-dir", data_dir, *args],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )
    first = proc.stdout.readline().strip()
    return proc, first.removeprefix("sluice listening on ")


def deploy(base, deployment):
    request(f"{base}/system/functions", json.dumps(deployment).encode())
