// loadgen posts one body to one URL, closed-loop (as fast as N connections go) or open-loop at a
// fixed rate. Open-loop latency is measured from when each request was due, not when it was
// sent, so a stalled server cannot hide its queue (no coordinated omission). Prints one JSON line.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"sort"
	"sync"
	"time"
)

type result struct {
	Requests  int         `json:"requests"`
	Seconds   float64     `json:"seconds"`
	PerSecond float64     `json:"per_second"`
	P50Ms     float64     `json:"p50_ms"`
	P90Ms     float64     `json:"p90_ms"`
	P99Ms     float64     `json:"p99_ms"`
	MaxMs     float64     `json:"max_ms"`
	Statuses  map[int]int `json:"statuses"`
	Errors    int         `json:"errors"`
	// Requests without an answer by what went wrong (the URL left out): the 30 s timeout, a
	// connection the server closed or reset.
	ErrorKinds map[string]int `json:"error_kinds"`
}

func main() {
	url := flag.String("url", "", "URL to POST to")
	key := flag.String("key", "", "write key (Authorization: Bearer)")
	bodyFile := flag.String("body", "", "file holding the JSON body")
	connections := flag.Int("c", 64, "concurrent connections")
	duration := flag.Duration("d", 10*time.Second, "how long to run")
	rate := flag.Float64("rate", 0, "requests per second (0: as fast as the connections go)")
	flag.Parse()
	body, err := os.ReadFile(*bodyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: *connections, MaxConnsPerHost: *connections},
	}

	var mu sync.Mutex
	latencies := make([]float64, 0, 1<<16)
	statuses := map[int]int{}
	errors := 0
	errorKinds := map[string]int{}
	send := func(due time.Time) {
		req, _ := http.NewRequest("POST", *url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+*key)
		resp, err := client.Do(req)
		elapsed := float64(time.Since(due).Microseconds()) / 1000
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errors++
			if urlErr, ok := err.(*neturl.Error); ok {
				err = urlErr.Err
			}
			errorKinds[err.Error()]++
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses[resp.StatusCode]++
		latencies = append(latencies, elapsed)
	}

	start := time.Now()
	end := start.Add(*duration)
	var wg sync.WaitGroup
	if *rate > 0 {
		due := make(chan time.Time, 100000)
		for i := 0; i < *connections; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for t := range due {
					send(t)
				}
			}()
		}
		interval := time.Duration(float64(time.Second) / *rate)
		for t := start; t.Before(end); t = t.Add(interval) {
			time.Sleep(time.Until(t))
			due <- t
		}
		close(due)
	} else {
		for i := 0; i < *connections; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) {
					send(time.Now())
				}
			}()
		}
	}
	wg.Wait()
	seconds := time.Since(start).Seconds()
	sort.Float64s(latencies)
	pct := func(p float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[int(p*float64(len(latencies)-1))]
	}
	out := result{
		Requests: len(latencies), Seconds: seconds, PerSecond: float64(len(latencies)) / seconds,
		P50Ms: pct(0.50), P90Ms: pct(0.90), P99Ms: pct(0.99), MaxMs: pct(1.0),
		Statuses: statuses, Errors: errors, ErrorKinds: errorKinds,
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
