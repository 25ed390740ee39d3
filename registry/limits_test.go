package registry

import (
	"encoding/json"
	"testing"
)

// jsonValues counts the values of a decoded JSON document.
func jsonValues(v any) int {
	n := 1
	switch v := v.(type) {
	case []any:
		for _, x := range v {
			n += jsonValues(x)
		}
	case map[string]any:
		for _, x := range v {
			n += jsonValues(x)
		}
	}
	return n
}

// TestJSONCounter: commas and opening brackets outside strings, plus one.
func TestJSONCounter(t *testing.T) {
	tests := []struct {
		doc  string
		want int
	}{
		{`{}`, 2},
		{`{"a":1,"b":[2,3]}`, 5},
		{`[{},{},{}]`, 7},
		{`{"s":"a,b[c{d\",e\\"}`, 2},
		{`{"s":"\\\\","t":[1]}`, 4},
	}
	for _, tt := range tests {
		var c jsonCounter
		c.scan([]byte(tt.doc))
		if got := c.values(); got != tt.want {
			t.Errorf("jsonCounter(%s).values() = %d, want %d", tt.doc, got, tt.want)
		}
	}
}

// FuzzJSONCounter checks that the counter never counts fewer values than
// a document decodes into, however the document is split between reads.
func FuzzJSONCounter(f *testing.F) {
	for _, s := range []string{
		`{"schemaVersion":2,"config":{"digest":"sha256:00","size":1},"layers":[{},{}]}`,
		`{"s":"a,b[c{d\",e\\"}`, `["\\\"",{"k":"\u002c"}]`, `[[[[]]]]`, `"x"`, `1`,
	} {
		f.Add([]byte(s), uint16(3))
	}
	f.Fuzz(func(t *testing.T, doc []byte, split uint16) {
		var whole, parts jsonCounter
		whole.scan(doc)
		i := int(split) % (len(doc) + 1)
		parts.scan(doc[:i])
		parts.scan(doc[i:])
		if whole != parts {
			t.Fatalf("scan(%q) = %+v whole, %+v split at %d", doc, whole, parts, i)
		}
		var v any
		if json.Unmarshal(doc, &v) != nil {
			return
		}
		if got, want := whole.values(), jsonValues(v); got < want {
			t.Fatalf("jsonCounter(%s).values() = %d, fewer than the %d values it decodes into", doc, got, want)
		}
	})
}
