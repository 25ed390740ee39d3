package conns

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"buildguard.dev/buildguard/internal/shorten"
)

// traceField is one field of a tracepoint record as tracefs describes it in
// events/<group>/<name>/format.
type traceField struct {
	Offset int
	Size   int
	Signed bool
}

// Bounds on a format file: real ones are about 2 KiB with a few dozen fields.
const (
	maxFormatBytes  = 64 << 10
	maxFormatFields = 256
	// maxTraceRecord is the kernel's PERF_MAX_TRACE_SIZE: tracepoint
	// programs may read their context only below it.
	maxTraceRecord = 2048
	// minTraceOffset: the first 8 bytes (common_type, flags, preempt count,
	// pid) are not readable by tracepoint programs.
	minTraceOffset = 8
	// quoteLen bounds untrusted text quoted in errors.
	quoteLen = 80
)

// parseTraceFormat parses a tracefs format file into its fields by name.
// Lines other than "field:" lines are ignored.
func parseTraceFormat(data []byte) (map[string]traceField, error) {
	if len(data) > maxFormatBytes {
		return nil, fmt.Errorf("format file is %d bytes, more than %d", len(data), maxFormatBytes)
	}
	fields := make(map[string]traceField)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxFormatBytes)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(text, "field:") {
			continue
		}
		name, f, err := parseFieldLine(text)
		if err != nil {
			return nil, fmt.Errorf("format line %d: %w", line, err)
		}
		if _, dup := fields[name]; dup {
			return nil, fmt.Errorf("format line %d: field %q twice", line, name)
		}
		if len(fields) == maxFormatFields {
			return nil, fmt.Errorf("format line %d: more than %d fields", line, maxFormatFields)
		}
		fields[name] = f
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("format: %w", err)
	}
	if len(fields) == 0 {
		return nil, fmt.Errorf("format: no fields")
	}
	return fields, nil
}

// parseFieldLine parses
//
//	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;
func parseFieldLine(text string) (string, traceField, error) {
	parts := strings.Split(text, ";")
	if len(parts) < 4 {
		return "", traceField{}, fmt.Errorf("want field, offset, size and signed in %q", shorten.Text(text, quoteLen))
	}
	decl := strings.TrimSpace(strings.TrimPrefix(parts[0], "field:"))
	name, err := fieldName(decl)
	if err != nil {
		return "", traceField{}, err
	}
	var f traceField
	for i, key := range []string{"offset", "size", "signed"} {
		k, v, ok := strings.Cut(strings.TrimSpace(parts[i+1]), ":")
		if !ok || k != key {
			return "", traceField{}, fmt.Errorf("field %s: want %s:N, got %q", name, key, shorten.Text(parts[i+1], quoteLen))
		}
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil {
			return "", traceField{}, fmt.Errorf("field %s: %s: %w", name, key, err)
		}
		switch key {
		case "offset":
			f.Offset = int(n)
		case "size":
			f.Size = int(n)
		case "signed":
			if n > 1 {
				return "", traceField{}, fmt.Errorf("field %s: signed:%d is not 0 or 1", name, n)
			}
			f.Signed = n == 1
		}
	}
	return name, f, nil
}

// fieldName returns the identifier a C declaration declares:
// "const void * skaddr" → skaddr, "__u8 saddr[4]" → saddr,
// "__data_loc char[] name" → name.
func fieldName(decl string) (string, error) {
	if strings.HasSuffix(decl, "]") {
		if i := strings.LastIndexByte(decl, '['); i >= 0 {
			decl = strings.TrimRight(decl[:i], " \t")
		}
	}
	j := strings.LastIndexAny(decl, " \t*")
	name := decl[j+1:]
	if !isIdent(name) {
		return "", fmt.Errorf("no field name in %q", shorten.Text(decl, quoteLen))
	}
	return name, nil
}

func isIdent(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i, c := range []byte(s) {
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// sockStateLayout locates the fields of sock:inet_sock_set_state the BPF
// program reads.
type sockStateLayout struct {
	Newstate, Protocol, Family, Dport, Daddr, DaddrV6 traceField
}

// sockStateLayoutFrom checks that the fields exist with sizes and offsets the
// program can load.
func sockStateLayoutFrom(fields map[string]traceField) (sockStateLayout, error) {
	var l sockStateLayout
	for _, want := range []struct {
		name   string
		dst    *traceField
		sizes  []int
		scalar bool
	}{
		{"newstate", &l.Newstate, []int{4}, true},
		{"protocol", &l.Protocol, []int{1, 2, 4}, true},
		{"family", &l.Family, []int{1, 2, 4}, true},
		{"dport", &l.Dport, []int{2}, true},
		{"daddr", &l.Daddr, []int{4}, false},
		{"daddr_v6", &l.DaddrV6, []int{16}, false},
	} {
		f, ok := fields[want.name]
		if !ok {
			return l, fmt.Errorf("tracepoint has no field %q", want.name)
		}
		sizeOK := false
		for _, s := range want.sizes {
			sizeOK = sizeOK || f.Size == s
		}
		if !sizeOK {
			return l, fmt.Errorf("field %s has size %d, want one of %v", want.name, f.Size, want.sizes)
		}
		if f.Offset < minTraceOffset || f.Offset+f.Size > maxTraceRecord {
			return l, fmt.Errorf("field %s at offset %d size %d is outside the readable record [%d, %d)", want.name, f.Offset, f.Size, minTraceOffset, maxTraceRecord)
		}
		if want.scalar && f.Offset%f.Size != 0 {
			return l, fmt.Errorf("field %s at offset %d is not aligned to its size %d", want.name, f.Offset, f.Size)
		}
		*want.dst = f
	}
	return l, nil
}
