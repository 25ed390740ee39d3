package registry

import (
	"fmt"
	"strings"
	"testing"
	"unsafe"
)

// TestInterner: equal strings come back as one copy, and the interner
// stays within its bounds whatever it is given.
func TestInterner(t *testing.T) {
	var in interner
	a := in.string(strings.Clone("RUN /bin/sh -c make # buildkit"))
	b := in.string(strings.Clone("RUN /bin/sh -c make # buildkit"))
	if a != b || unsafe.StringData(a) != unsafe.StringData(b) {
		t.Errorf("interning %q twice gave two copies", a)
	}
	long := strings.Repeat("x", maxInternString+1)
	if in.string(long); in.m[long] != "" {
		t.Errorf("a string of %d bytes was kept, want none longer than %d", len(long), maxInternString)
	}
	for i := range 3 * maxInternStrings {
		in.string(fmt.Sprint("ENV N=", i))
		if len(in.m) > maxInternStrings {
			t.Fatalf("after %d strings the interner holds %d, more than %d", i+1, len(in.m), maxInternStrings)
		}
	}
	for i := range 1000 {
		in.string(fmt.Sprintf("RUN %04d %s", i, strings.Repeat("y", maxInternString-9)))
		if in.bytes > maxInternBytes {
			t.Fatalf("after %d long strings the interner holds %d bytes, more than %d", i+1, in.bytes, maxInternBytes)
		}
	}
}
