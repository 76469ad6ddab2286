// The server Sluice runs (mode http): Handle on the port in $PORT, and /_/health for readiness.
package main

import (
	"log"
	"net/http"
	"os"
)

func main() {
	mux := http.NewServeMux()
	mux.HandleFunc("/_/health", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("OK")) })
	mux.HandleFunc("/", Handle)
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("{{name}} listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}
