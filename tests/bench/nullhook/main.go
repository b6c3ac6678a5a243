// nullhook is the cheapest admission webhook there can be, the floor bench_cluster.py measures
// podlock against in the same run: it reads each AdmissionReview, answers "allowed" with no
// patch, and does nothing else. Go's net/http over TLS, which offers HTTP/2 to the API server,
// as the webhooks written in Go (Kyverno, Gatekeeper) do. GET /count says how many reviews it
// has answered, so the benchmark can tell when the API server has started or stopped calling.
//
//	nullhook -bind 127.0.0.1:8443 -cert tls.crt -key tls.key
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"sync/atomic"
)

type review struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		UID string `json:"uid"`
	} `json:"request,omitempty"`
	Response *answer `json:"response,omitempty"`
}

type answer struct {
	UID     string `json:"uid"`
	Allowed bool   `json:"allowed"`
}

func main() {
	bind := flag.String("bind", "127.0.0.1:8443", "address to listen on")
	cert := flag.String("cert", "tls.crt", "serving certificate (PEM)")
	key := flag.String("key", "tls.key", "its private key (PEM)")
	flag.Parse()

	var answered atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, answered.Load())
	})
	mux.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		var in review
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Request == nil {
			http.Error(w, "not an AdmissionReview", http.StatusBadRequest)
			return
		}
		out := review{APIVersion: in.APIVersion, Kind: in.Kind, Response: &answer{UID: in.Request.UID, Allowed: true}}
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(out); err != nil {
			return // the API server hung up; it has its own timeout
		}
		answered.Add(1)
	})
	log.Fatal(http.ListenAndServeTLS(*bind, *cert, *key, mux))
}
