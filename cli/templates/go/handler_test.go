// Run with: go test (in this directory).
package main

import (
	"net/http/httptest"
	"strings"
	"testing"
)

func TestGreetsTheNameInTheBody(t *testing.T) {
	w := httptest.NewRecorder()
	Handle(w, httptest.NewRequest("POST", "/", strings.NewReader("hi\n")))
	if got := w.Body.String(); got != "Hello, hi!\n" {
		t.Fatalf("got %q", got)
	}
}

func TestGreetsTheWorldWithoutABody(t *testing.T) {
	w := httptest.NewRecorder()
	Handle(w, httptest.NewRequest("GET", "/", nil))
	if got := w.Body.String(); got != "Hello, world!\n" {
		t.Fatalf("got %q", got)
	}
}
