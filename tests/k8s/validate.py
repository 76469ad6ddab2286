#!/usr/bin/env python3
"""Validates Kubernetes objects against the Kubernetes 1.30 API schemas (strict: unknown fields fail).

    python3 tests/k8s/validate.py FILE...

Each FILE (`-` for stdin) is JSON (one object, a list of objects, or a List with "items") or YAML (one or more
documents, each an object or a List). Prints `ok <kind>/<name>` or the error for each object, and
exits non-zero if any object is invalid or a file cannot be read. The Rust Kubernetes provider's
tests run it on the Deployments and Services they generate.
"""

import json
import sys

KUBE_VERSION = "1.30"

try:
    import kubernetes_validate
    import yaml
except ImportError as error:
    sys.exit(
        f"validate.py: {error}.\nInstall what it needs, from the repository root:\n"
        "    python3 -m pip install -r charts/sluice/tests/requirements.txt"
    )


def documents(path):
    """The top-level documents in a file (`-`: stdin): JSON first, then (multi-document) YAML."""
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def objects(doc):
    """The objects in one document: a list of them, a List's items, or the object itself."""
    if isinstance(doc, list):
        for item in doc:
            yield from objects(item)
    elif isinstance(doc, dict) and "items" in doc and (doc.get("kind", "List").endswith("List")):
        for item in doc["items"] or []:
            yield from objects(item)
    else:
        yield doc


def describe(obj):
    if not isinstance(obj, dict):
        return f"(not an object: {type(obj).__name__})"
    name = (obj.get("metadata") or {}).get("name", "(no name)")
    return f"{obj.get('kind', '(no kind)')}/{name}"


def validate(obj):
    """None if `obj` is valid, else what is wrong with it."""
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return "not a Kubernetes object (it needs apiVersion and kind)"
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        at = "/".join(str(p) for p in error.path) or "(top)"
        return f"at {at}: {error.message}"
    except Exception as error:  # SchemaNotFoundError and friends carry .message
        return getattr(error, "message", None) or repr(error)
    return None


def main(paths):
    if not paths:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    failed = 0
    count = 0
    unreadable = 0
    for path in paths:
        try:
            docs = documents(path)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            print(f"error {path}: cannot read: {error}")
            unreadable += 1
            continue
        for doc in docs:
            for obj in objects(doc):
                count += 1
                problem = validate(obj)
                if problem:
                    failed += 1
                    print(f"error {path}: {describe(obj)}: {problem}")
                else:
                    print(f"ok {describe(obj)}")
    if failed or unreadable:
        print(f"{failed} of {count} object(s) invalid for Kubernetes {KUBE_VERSION}, "
              f"{unreadable} file(s) unreadable", file=sys.stderr)
        return 1
    if count == 0:
        print("error: no objects in " + ", ".join(paths), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
