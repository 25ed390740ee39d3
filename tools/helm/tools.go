//go:build tools

// Package helm pins the helm CLI that the chart's tests run (helm
// template, lint) and the real-node e2e installs with.
package helm

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
