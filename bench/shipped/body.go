package main

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/bench/internal/reviewload"
	"buildguard.dev/buildguard/internal/benchreview"
)

// newBody makes the AdmissionReview of a CREATE of an apps/v1 Deployment
// with n containers. With 3 or more the first is an init container.
// Container i runs images[i] (images[0] when same), by tag when i is
// even and by digest when it is odd; with same the second runs it by tag
// too, as in issue 15's "init + 2 containers (tag, tag, digest)".
func newBody(images []reviewload.Image, n int, same bool) (*benchreview.Body, error) {
	var inits, containers []corev1.Container
	for i := range n {
		img := images[0]
		if !same {
			img = images[i]
		}
		ref := img.Tag
		if i%2 == 1 && !(same && i == 1) {
			ref = img.ByDigest()
		}
		c := benchreview.Container(fmt.Sprintf("c%d", i), ref, int32(8080+i))
		if i == 0 && n >= 3 {
			c.Name, c.ReadinessProbe, c.Ports = "migrate", nil, nil
			inits = append(inits, c)
			continue
		}
		containers = append(containers, c)
	}
	return benchreview.NewBody(inits, containers)
}
