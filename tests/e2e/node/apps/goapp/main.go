// Demo Go app for the end-to-end suite (unmodified by refreshbus): serves the JSON file
// named by $CONFIG_FILE (default /etc/demo/config.json), re-read on SIGHUP; a file that is
// not valid JSON is refused and the previous config kept.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

var (
	mu     sync.Mutex
	config any
	loads  int
)

func load(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var parsed any
	if err := json.Unmarshal(data, &parsed); err != nil {
		return fmt.Errorf("invalid JSON in %s: %w", file, err)
	}
	mu.Lock()
	config, loads = parsed, loads+1
	mu.Unlock()
	return nil
}

func main() {
	file := os.Getenv("CONFIG_FILE")
	if file == "" {
		file = "/etc/demo/config.json"
	}
	if err := load(file); err != nil {
		log.Print(err)
	}
	hup := make(chan os.Signal, 4)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if err := load(file); err != nil {
				log.Printf("reload failed: %v", err)
			} else {
				log.Printf("reloaded (%d)", loads)
			}
		}
	}()
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"config": config, "loads": loads, "pid": os.Getpid()})
	})
	log.Printf("listening on :8080, config %s", file)
	log.Fatal(http.ListenAndServe(":8080", nil))
}
