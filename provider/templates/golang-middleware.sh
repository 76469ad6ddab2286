#!/bin/sh
# Sluice's runner for OpenFaaS's golang-middleware template, without containers: it builds the
# handler (package function, Handle(w, r), in the working directory) into a server with the
# local Go toolchain, then runs it on $PORT, as the template's main.go does. Builds are kept in
# $SLUICE_BUILD_DIR, one per handler directory, and made again when the handler changes.
set -eu

handler_dir=$(pwd)
command -v go > /dev/null || { echo "golang-middleware needs Go on the Sluice host (go not found on the PATH)" >&2; exit 1; }
base=${SLUICE_BUILD_DIR:-${TMPDIR:-/tmp}/sluice-go-builds}
key=$(printf '%s' "$handler_dir" | sha256sum | cut -c1-16)
build="$base/$key"
mkdir -p "$base"
chmod 700 "$base"

(
    flock 9
    # The handler as it is now: rebuilt when any of its files changed.
    stamp=$(find . -type f -not -path './.git/*' -exec sha256sum {} + | sort | sha256sum | cut -c1-64)
    if [ "$(cat "$build/.stamp" 2> /dev/null)" != "$stamp" ] || [ ! -x "$build/handler" ]; then
        rm -rf "$build"
        mkdir -p "$build/function"
        cp -R . "$build/function/"
        local_go=$(go env GOVERSION | sed 's/^go//')
        want_go=$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$build/function/go.mod" 2> /dev/null || true)
        if [ -n "$want_go" ] && [ "$(printf '%s\n%s\n' "$want_go" "$local_go" | sort -V | head -n1)" != "$want_go" ]; then
            echo "go.mod asks for Go $want_go; building with the local Go $local_go" >&2
            short=$(echo "$local_go" | cut -d. -f1,2)
            sed -i "s/^go [0-9.]*.*/go $short/; /^toolchain /d" "$build/function/go.mod"
        fi
        [ -f "$build/function/go.mod" ] || printf 'module handler/function\n\ngo %s\n' "$(echo "$local_go" | cut -d. -f1,2)" > "$build/function/go.mod"
        short=$(echo "$local_go" | cut -d. -f1,2)
        cat > "$build/go.mod" << MOD
module handler

go $short

require handler/function v0.0.0

replace handler/function => ./function
MOD
        cat > "$build/main.go" << 'MAIN'
package main

import (
	"log"
	"net/http"
	"os"

	"handler/function"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/_/health", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("OK")) })
	mux.HandleFunc("/", function.Handle)
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("golang-middleware listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
MAIN
        echo "building the handler with $(go version)" >&2
        (cd "$build" && GOTOOLCHAIN=local GOFLAGS=-mod=mod go build -o handler .) >&2
        echo "$stamp" > "$build/.stamp"
    fi
) 9> "$base/$key.lock"

# limits.memory, held to the server only (not to the build above).
if [ -n "${SLUICE_MEMORY_LIMIT:-}" ]; then
    ulimit -d $((SLUICE_MEMORY_LIMIT / 1024))
fi
exec "$build/handler"
