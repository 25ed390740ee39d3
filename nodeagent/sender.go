package nodeagent

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
)

// Sender delivers the spool's batches, oldest first, to buildguard's
// POST /v1/node-reports.
type Sender struct {
	// URL is the endpoint, https://buildguard.buildguard-system.svc/v1/node-reports.
	URL string
	// TokenFile holds the service-account token, read again before every
	// request: the kubelet rotates projected tokens.
	TokenFile string
	// CAFile, when set, holds the CAs of buildguard's serving certificate;
	// it is read again when it changes (the kubelet updates a mounted
	// Secret when the CA is rotated). Otherwise Client is used as is.
	CAFile string
	Client *http.Client
	// Spool and Metrics are required.
	Spool   *Spool
	Metrics *Metrics
	Log     *slog.Logger
	// MinBackoff and MaxBackoff bound the wait between failed attempts.
	// The defaults are 1s and 1m.
	MinBackoff, MaxBackoff time.Duration
	// Timeout bounds one request. The default is 30s.
	Timeout time.Duration

	caStamp string // size and modification time of the CAFile read
}

// NewHTTPClient returns a client that trusts the CAs in caFile (the
// system's when empty).
func NewHTTPClient(caFile string) (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate in it", caFile)
		}
		cfg.RootCAs = pool
	}
	tr := &http.Transport{
		TLSClientConfig: cfg, Proxy: http.ProxyFromEnvironment,
		TLSHandshakeTimeout: 10 * time.Second, ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConns: 2, IdleConnTimeout: 90 * time.Second,
	}
	return &http.Client{Transport: tr}, nil
}

// sendOutcome is what became of one attempt.
type sendOutcome int

const (
	sent     sendOutcome = iota // 2xx: the server has it
	retry                       // try again later: network, 5xx, 429, a token not there yet, a 4xx about the endpoint
	rejected                    // 400, 413, 415, 422: the batch would never be taken
)

// Run sends until ctx ends.
func (s *Sender) Run(ctx context.Context) {
	backoff := s.minBackoff()
	for {
		seq, data, ok, err := s.Spool.Oldest()
		if err != nil {
			s.log().Error("reading the buffer failed", "error", err)
			if !clock.Sleep(ctx, clock.Real{}, s.maxBackoff()) {
				return
			}
			continue
		}
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-s.Spool.Ready():
			}
			continue
		}
		out, wait := s.send(ctx, data)
		if ctx.Err() != nil {
			return
		}
		switch out {
		case sent, rejected:
			if err := s.Spool.Remove(seq); err != nil {
				s.log().Error("removing a sent batch failed", "error", err)
			}
			backoff = s.minBackoff()
		case retry:
			if wait <= 0 {
				// Jitter over the upper half of the backoff ("equal
				// jitter"), so that a fleet of agents does not come back
				// at the same instant after an outage.
				wait = backoff/2 + rand.N(backoff/2+1)
				backoff = min(2*backoff, s.maxBackoff())
			}
			if !clock.Sleep(ctx, clock.Real{}, wait) {
				return
			}
		}
		s.Metrics.buffer(s.Spool.Len())
	}
}

// send makes one attempt; wait is the server's Retry-After, if any.
func (s *Sender) send(ctx context.Context, data []byte) (sendOutcome, time.Duration) {
	m := s.Metrics
	token, err := os.ReadFile(s.TokenFile)
	if err != nil || len(bytes.TrimSpace(token)) == 0 {
		m.sendErrors.WithLabelValues("token").Inc()
		s.log().Warn("no service-account token to send with; will retry", "file", s.TokenFile, "error", err)
		return retry, 0
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, bytes.NewReader(data))
	if err != nil {
		s.log().Error("bad server URL", "error", err)
		return retry, s.maxBackoff()
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+string(bytes.TrimSpace(token)))
	client, err := s.client()
	if err != nil {
		m.sendErrors.WithLabelValues("ca").Inc()
		s.log().Error("cannot read the CA file; will retry", "error", err)
		return retry, 0
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		if ctx.Err() == nil || errors.Is(ctx.Err(), context.DeadlineExceeded) {
			m.sendErrors.WithLabelValues("network").Inc()
			s.log().Warn("sending a report failed; buffered, will retry", "error", err)
		}
		return retry, 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	m.sendDuration.Observe(time.Since(start).Seconds())
	code := resp.StatusCode
	switch {
	case code/100 == 2:
		var res struct {
			Accepted   struct{ Builds, Connections int }
			Duplicates int
			Errors     []struct {
				Index  int
				Reason string
			}
		}
		json.Unmarshal(body, &res)
		m.batchesSent.Inc()
		m.itemsSent.WithLabelValues("build").Add(float64(res.Accepted.Builds))
		m.itemsSent.WithLabelValues("connection").Add(float64(res.Accepted.Connections))
		for _, e := range res.Errors {
			// The rest of the batch was taken; these items will never be.
			m.itemsRejected.Inc()
			s.log().Warn("the server refused an item of a report", "index", e.Index, "reason", e.Reason)
		}
		s.log().Debug("report sent", "builds", res.Accepted.Builds, "connections", res.Accepted.Connections, "duplicates", res.Duplicates)
		return sent, 0
	case code == http.StatusBadRequest || code == http.StatusRequestEntityTooLarge ||
		code == http.StatusUnsupportedMediaType || code == http.StatusUnprocessableEntity:
		m.sendErrors.WithLabelValues(strconv.Itoa(code)).Inc()
		m.batchesDropped.WithLabelValues("rejected").Inc()
		s.log().Error("the server refused a report; it is dropped, as it would never be taken", "status", code, "message", shortBody(body))
		return rejected, 0
	default:
		// 5xx, 408 and 429 are passing. 401 and 403 are about the
		// credentials, not the batch: a token the kubelet has not rotated
		// yet, or RBAC being fixed. 404, 405 and other 4xx are about the
		// endpoint (a wrong --server path, a proxy, a server without the
		// API yet): dropping would throw every batch away. The batch
		// waits in the buffer (bounded) rather than being thrown away.
		m.sendErrors.WithLabelValues(strconv.Itoa(code)).Inc()
		s.log().Warn("the server cannot take a report now; buffered, will retry", "status", code, "message", shortBody(body))
		return retry, retryAfter(resp.Header.Get("Retry-After"), s.maxBackoff())
	}
}

// client returns the HTTP client, made again when CAFile changed.
func (s *Sender) client() (*http.Client, error) {
	if s.CAFile == "" {
		if s.Client == nil {
			// The system's CAs; never a client that skips verification.
			c, err := NewHTTPClient("")
			if err != nil {
				return nil, err
			}
			s.Client = c
		}
		return s.Client, nil
	}
	fi, err := os.Stat(s.CAFile)
	if err != nil {
		return nil, err
	}
	stamp := fmt.Sprintf("%d/%d", fi.Size(), fi.ModTime().UnixNano())
	if s.Client != nil && stamp == s.caStamp {
		return s.Client, nil
	}
	c, err := NewHTTPClient(s.CAFile)
	if err != nil {
		return nil, err
	}
	if s.Client != nil {
		s.Client.CloseIdleConnections()
	}
	s.Client, s.caStamp = c, stamp
	return c, nil
}

// retryAfter parses a Retry-After of seconds, capped at limit.
func retryAfter(v string, limit time.Duration) time.Duration {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n <= 0 {
		return 0
	}
	return min(time.Duration(n)*time.Second, limit)
}

func shortBody(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

func (s *Sender) minBackoff() time.Duration {
	if s.MinBackoff <= 0 {
		return time.Second
	}
	return s.MinBackoff
}

func (s *Sender) maxBackoff() time.Duration {
	if s.MaxBackoff <= 0 {
		return time.Minute
	}
	return max(s.MaxBackoff, s.minBackoff())
}

func (s *Sender) timeout() time.Duration {
	if s.Timeout <= 0 {
		return 30 * time.Second
	}
	return s.Timeout
}

func (s *Sender) log() *slog.Logger {
	return logger.OrDiscard(s.Log)
}
