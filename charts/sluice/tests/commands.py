#!/usr/bin/env python3
"""Prints, as JSON, how the chart runs the `sluice` binary: for each container of the Sluice
image (defaults and ci/production-values.yaml), its command, args and the names of the
environment variables it is given. The Rust test in cli/tests/kubernetes.rs parses each with the
real command line, so the chart cannot drift from the flags the binary takes.

    python3 charts/sluice/tests/commands.py
"""

import json
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent

try:
    import yaml
    from helm_python import Chart
except ImportError as error:
    sys.exit(
        f"commands.py: {error}; run: python3 -m pip install -r charts/sluice/tests/requirements.txt"
    )


def containers(values):
    chart = Chart.load(str(CHART))
    files = chart.render(values, name="sluice", namespace="openfaas")
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for obj in yaml.safe_load_all(text):
            spec = ((obj or {}).get("spec") or {}).get("template", {}).get("spec")
            if not spec:
                continue
            for c in spec.get("containers", []):
                if "sluice" not in c.get("image", "") or c.get("command") != ["sluice"]:
                    continue
                yield {
                    "object": f"{obj['kind']}/{obj['metadata']['name']}",
                    "argv": c["command"] + c.get("args", []),
                    "env": [e["name"] for e in c.get("env", [])],
                }


production = yaml.safe_load((CHART / "ci" / "production-values.yaml").read_text())
print(json.dumps(list(containers({})) + list(containers(production))))
