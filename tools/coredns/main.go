// Command coredns is CoreDNS with the plugins a cluster's DNS needs and
// no others (kubernetes, cache, errors, log, health, ready), built from its
// pinned module for the e2e tests' real node and the demo: pods resolve
// Services by name as they do in users' clusters.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	// The order in which the plugins see a query, as in CoreDNS's own
	// list (core/dnsserver/zdirectives.go).
	dnsserver.Directives = []string{"ready", "health", "errors", "log", "cache", "kubernetes"}
	coremain.Run()
}
