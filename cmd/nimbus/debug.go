package main

import (
	"log/slog"
	"net/http"
	"net/http/pprof"
	"os"
)

// pprofEnv names an address (127.0.0.1:6060) on which a mount serves Go's
// profiles (/debug/pprof/heap, …), to find where its memory or CPU goes.
// Unset, nothing listens.
const pprofEnv = "NIMBUS_PPROF"

// startProfiling starts the profile endpoint of a serving mount if
// pprofEnv asks for it.
func startProfiling(log *slog.Logger) {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // heap, goroutine, allocs…
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		// Debugging aid only: a mount works the same without it.
		err := http.ListenAndServe(addr, mux)
		log.Warn("profile endpoint stopped", "env", pprofEnv, "addr", addr, "err", err)
	}()
}
