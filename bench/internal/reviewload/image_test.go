package reviewload

import "testing"

func TestImageByDigest(t *testing.T) {
	img := Image{Tag: "127.0.0.1:5000/bench/app-1:v1", Digest: "sha256:abc"}
	if got, want := img.ByDigest(), "127.0.0.1:5000/bench/app-1@sha256:abc"; got != want {
		t.Errorf("ByDigest() = %q, want %q", got, want)
	}
}
