package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"buildguard.dev/buildguard/nodeagent"
	"buildguard.dev/buildguard/nodeagent/conns"
)

// nodeAgent runs `buildguard node-agent` (docs/node-agent.md).
func nodeAgent(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("node-agent", flag.ContinueOnError)
	dockerHost := fs.String("docker-host", "unix:///var/run/docker.sock", "Docker Engine API address: unix:///path or tcp://host:port (\"\" or off: Docker not watched); a unix socket is waited for while it does not exist")
	containerdAddr := fs.String("containerd-address", nodeagent.DefaultContainerdAddress, "containerd's socket, unix:///path (\"\" or off: containerd not watched); waited for while it does not exist")
	containerdNS := fs.String("containerd-namespaces", nodeagent.DefaultContainerdNamespaces, "comma-separated containerd namespaces whose image events are watched")
	serverURL := fs.String("server", "", "buildguard's URL (https://buildguard.buildguard-system.svc); reports go to its /v1/node-reports")
	caFile := fs.String("ca-file", "", "PEM file of the CA that signed buildguard's serving certificate (default: the system's CAs)")
	tokenFile := fs.String("token-file", "/var/run/secrets/buildguard/token", "service-account token (audience buildguard), read again before every send")
	node := fs.String("node", os.Getenv("NODE_NAME"), "this node's Kubernetes name (default $NODE_NAME)")
	bufferDir := fs.String("buffer-dir", "/var/lib/buildguard-node-agent/buffer", "directory of reports waiting to be sent; kept across restarts")
	bufferMax := fs.Int64("buffer-max-bytes", nodeagent.DefaultBufferMaxBytes, "bound of the buffer; beyond it the oldest reports are dropped")
	batchInterval := fs.Duration("batch-interval", 2*time.Second, "longest an item waits before its batch is stored for sending")
	batchMax := fs.Int("batch-max-items", 500, "most builds and connections in one report")
	metricsListen := fs.String("metrics-listen", ":9090", "address of /metrics, /status, /healthz and /readyz (empty: none)")
	sensor := fs.String("sensor", "auto", "connection sensor: auto (eBPF, else /proc sampling), ebpf (fail without it) or procfs")
	procRoot := fs.String("proc-root", "/proc", "the host's procfs (the pod must share the host's PID namespace)")
	window := fs.Duration("window", 5*time.Minute, "how long connections wait in memory for their build, and builds for late connections")
	replay := fs.Duration("replay", 10*time.Minute, "how far back Docker events are read, and containerd images changed are looked at, at start, to find builds made before it")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{msg: fmt.Sprintf("node-agent takes no arguments, got %q", fs.Args())}
	}
	log, err := newLogger(*logFormat, "", stderr)
	if err != nil {
		return err
	}
	switch {
	case *serverURL == "":
		return &usageError{msg: "--server is required"}
	case strings.TrimSpace(*node) == "":
		return &usageError{msg: "--node is required (or set NODE_NAME, from the downward API's spec.nodeName)"}
	case *sensor != "auto" && *sensor != "ebpf" && *sensor != "procfs":
		return &usageError{msg: fmt.Sprintf("--sensor %q: want auto, ebpf or procfs", *sensor)}
	case *batchMax <= 0 || *batchMax > 10000:
		return &usageError{msg: "--batch-max-items: want 1..10000 (the server's limit per request)"}
	case *bufferMax <= 0:
		return &usageError{msg: fmt.Sprintf("--buffer-max-bytes %d: must be positive", *bufferMax)}
	case *batchInterval <= 0 || *window <= 0 || *replay <= 0:
		return &usageError{msg: "--batch-interval, --window and --replay must be positive"}
	}
	endpoint, err := reportURL(*serverURL)
	if err != nil {
		return &usageError{msg: err.Error()}
	}
	// Checked now, so that a wrong path fails at start; the sender reads
	// it again whenever it changes.
	client, err := nodeagent.NewHTTPClient(*caFile)
	if err != nil {
		return err
	}
	var dockerW *nodeagent.DockerWatcher
	if h := strings.TrimSpace(*dockerHost); h != "" && h != "off" {
		docker, err := nodeagent.NewDocker(h)
		if err != nil {
			return &usageError{msg: err.Error()}
		}
		dockerW = &nodeagent.DockerWatcher{Docker: docker, Log: log, Replay: *replay}
		if u, err := url.Parse(h); err == nil && u.Scheme == "unix" {
			// Waited for while it does not exist: a node without Docker.
			dockerW.Socket = u.Path
		}
	}
	var ctrW *nodeagent.ContainerdWatcher
	if addr := strings.TrimSpace(*containerdAddr); addr != "" && addr != "off" {
		var namespaces []string
		for ns := range strings.SplitSeq(*containerdNS, ",") {
			if ns = strings.TrimSpace(ns); ns != "" {
				namespaces = append(namespaces, ns)
			}
		}
		if len(namespaces) == 0 {
			return &usageError{msg: "--containerd-namespaces: want at least one namespace"}
		}
		ctrClient, err := nodeagent.NewContainerd(addr)
		if err != nil {
			return &usageError{msg: "--containerd-address: " + err.Error()}
		}
		defer ctrClient.Close()
		ctrW = &nodeagent.ContainerdWatcher{Client: ctrClient, Socket: ctrClient.Path, Namespaces: namespaces, Log: log, Replay: *replay}
	}
	if dockerW == nil && ctrW == nil {
		return &usageError{msg: "--docker-host and --containerd-address are both off: nothing to watch for builds"}
	}

	w, fallback := conns.New(conns.Options{ProcRoot: *procRoot, Log: log, ForceProcfs: *sensor == "procfs"})
	if *sensor == "ebpf" && fallback != nil {
		return fmt.Errorf("--sensor=ebpf: %w", fallback)
	}
	if *sensor == "procfs" {
		fallback = nodeagent.ErrProcfsRequested
	}

	metrics := nodeagent.NewMetrics()
	spool, err := nodeagent.OpenSpool(*bufferDir, *bufferMax, metrics.BufferDropped)
	if err != nil {
		return err
	}
	if dockerW != nil {
		dockerW.Metrics = metrics
	}
	if ctrW != nil {
		ctrW.Metrics = metrics
	}
	if n, b := spool.Len(); n > 0 {
		log.Info("reports buffered by an earlier run will be sent first", "batches", n, "bytes", b)
	}
	a := &nodeagent.Agent{
		Node:           strings.TrimSpace(*node),
		Docker:         dockerW,
		Containerd:     ctrW,
		Conns:          w,
		SensorFallback: fallback,
		Attrib:         &nodeagent.Attributor{Window: *window},
		Spool:          spool,
		Sender:         &nodeagent.Sender{URL: endpoint, TokenFile: *tokenFile, CAFile: *caFile, Client: client, Spool: spool, Log: log, Metrics: metrics},
		Metrics:        metrics,
		Log:            log,

		ProcRoot:      *procRoot,
		BatchInterval: *batchInterval,
		BatchMaxItems: *batchMax,
	}
	if *metricsListen != "" {
		ln, err := net.Listen("tcp", *metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		srv := &http.Server{Handler: a.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 30 * time.Second}
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener stopped", "error", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			srv.Shutdown(sctx)
		}()
		log.Info("serving metrics and health", "addr", ln.Addr().String())
	}
	log.Info("node agent started", "node", a.Node, "docker", *dockerHost, "containerd", *containerdAddr, "server", endpoint)
	return a.Run(ctx)
}

// reportURL is the node-report endpoint of buildguard at server. Only
// https is taken: every request carries the service-account token.
func reportURL(server string) (string, error) {
	u, err := url.Parse(server)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("--server %q: want https://host[:port]", server)
	}
	if !strings.HasSuffix(u.Path, "/v1/node-reports") {
		u.Path = strings.TrimSuffix(u.Path, "/") + "/v1/node-reports"
	}
	u.RawQuery, u.Fragment = "", ""
	return u.String(), nil
}
