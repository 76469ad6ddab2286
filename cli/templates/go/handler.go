// {{name}}: an HTTP handler in the shape of OpenFaaS's golang-middleware template.
package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Handle answers one request.
func Handle(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	name := strings.TrimSpace(string(body))
	if name == "" {
		name = "world"
	}
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintf(w, "Hello, %s!\n", name)
}
