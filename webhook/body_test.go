package webhook

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestReadBody(t *testing.T) {
	body := strings.Repeat("0123456789", 100)
	tests := []struct {
		name        string
		size, limit int64
	}{
		{"declared", 1000, 2000},
		{"declared at the limit", 1000, 1000},
		{"unknown size", -1, 2000},
		{"declared zero", 0, 2000},
		{"declared too small", 10, 2000},
		{"declared too large", 5000, 20000},
		{"declared above the limit", 3000, 2000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// OneByteReader: many short reads, as from a slow connection.
			got, err := readBody(iotest.OneByteReader(strings.NewReader(body)), tt.size, tt.limit)
			if err != nil || string(got) != body {
				t.Errorf("readBody(size %d) = %d bytes, %v; want the %d bytes", tt.size, len(got), err, len(body))
			}
		})
	}
	boom := errors.New("boom")
	got, err := readBody(io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(boom)), 10, 100)
	if !errors.Is(err, boom) || !bytes.Equal(got, []byte("abc")) {
		t.Errorf("readBody(failing reader) = %q, %v; want %q, %v", got, err, "abc", boom)
	}
}
