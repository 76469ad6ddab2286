# {{name}}: an OpenFaaS python3-http handler. Sluice runs it with its python3-http runner;
# list packages you import in requirements.txt (installed into the function's own
# virtual environment on deploy).


def handle(event, context):
    """event.body (bytes), event.headers, event.method, event.query, event.path."""
    name = event.body.decode().strip() or "world"
    return {
        "statusCode": 200,
        "body": f"Hello, {name}!\n",
        "headers": {"Content-Type": "text/plain"},
    }
