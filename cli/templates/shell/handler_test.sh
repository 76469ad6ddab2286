#!/bin/sh
# Run with: sh handler_test.sh (in this directory).
set -eu
cd "$(dirname "$0")"
got=$(printf 'hi\n' | sh handler.sh)
[ "$got" = "Hello, hi!" ] || { echo "FAIL: got '$got'"; exit 1; }
got=$(sh handler.sh < /dev/null)
[ "$got" = "Hello, world!" ] || { echo "FAIL: got '$got'"; exit 1; }
echo "ok"
