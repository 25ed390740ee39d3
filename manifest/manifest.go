// Package manifest reads Kubernetes objects from manifests as kubectl
// does — YAML documents separated by "---" lines, streams of JSON
// objects, List kinds expanded into their items — and keeps where each
// object and each of its fields is in its file, by line and column, so
// that what is said about an object can point at the line that caused it.
//
// Manifests are untrusted input: every reader is bounded (MaxBytes,
// MaxObjects) and a document that does not parse is an error naming its
// file and line, never a panic.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"unicode"

	"go.yaml.in/yaml/v3"
	k8syaml "sigs.k8s.io/yaml"
)

// Limits of one manifest stream.
const (
	// MaxBytes bounds a file or standard input.
	MaxBytes = 64 << 20
	// MaxObjects bounds the objects one stream may hold, List items
	// included.
	MaxObjects = 100_000
)

// Position is a place in a file; Line and Column count from 1.
type Position struct {
	Line   int `json:"line"`
	Column int `json:"column"`
}

// Object is one Kubernetes object of a manifest.
type Object struct {
	// File names the manifest: the path as given, or "-" for standard
	// input.
	File string
	// Pos is where the object starts.
	Pos Position
	// Item is the index of the object in its List, or -1 for an object
	// that is a document of its own.
	Item int
	// APIVersion, Kind, Namespace and Name are the object's; Namespace is
	// empty when the manifest names none.
	APIVersion, Kind, Namespace, Name string
	// JSON is the object, converted from YAML as kubectl converts it.
	JSON []byte

	node     *yaml.Node
	lineBase int // added to the node's lines
	colBase  int // added to the node's columns on its first line
	firstRow int // the node's first line, before lineBase
}

// String names the object as kubectl would, with its place:
// "deploy.yaml:12 Deployment shop/web".
func (o *Object) String() string {
	id := o.Name
	if o.Namespace != "" {
		id = o.Namespace + "/" + o.Name
	}
	return fmt.Sprintf("%s:%d %s %s", o.File, o.Pos.Line, o.Kind, id)
}

// Position returns where the field at pointer (a JSON pointer, RFC 6901:
// "/spec/template/spec/containers/0/image") is in the object's file: for
// a field of a mapping, the position of its key; for an item of a
// sequence, that of the item. It reports false when the object has no
// such field.
func (o *Object) Position(pointer string) (Position, bool) {
	n := o.node
	if n == nil {
		return Position{}, false
	}
	if pointer == "" {
		return o.Pos, true
	}
	if !strings.HasPrefix(pointer, "/") {
		return Position{}, false
	}
	at := n
	for _, tok := range strings.Split(pointer[1:], "/") {
		tok = strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		n = resolve(n)
		switch n.Kind {
		case yaml.MappingNode:
			found := false
			for i := 0; i+1 < len(n.Content); i += 2 {
				if k := resolve(n.Content[i]); k.Kind == yaml.ScalarNode && k.Value == tok {
					at, n, found = n.Content[i], n.Content[i+1], true
					break
				}
			}
			if !found {
				return Position{}, false
			}
		case yaml.SequenceNode:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(n.Content) || tok != strconv.Itoa(i) {
				return Position{}, false
			}
			n = n.Content[i]
			at = n
		default:
			return Position{}, false
		}
	}
	return o.place(at), true
}

// place converts a node's position to the file's.
func (o *Object) place(n *yaml.Node) Position {
	p := Position{Line: n.Line + o.lineBase, Column: n.Column}
	if n.Line == o.firstRow {
		p.Column += o.colBase
	}
	return p
}

// maxAliasDepth bounds how many aliases a pointer follows in a row.
const maxAliasDepth = 64

func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < maxAliasDepth; i++ {
		n = n.Alias
	}
	return n
}

// Error is a manifest that cannot be read, with where.
type Error struct {
	File string
	// Line is where the trouble is, or 0 when no line can be told.
	Line int
	Err  error
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %v", e.File, e.Line, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.File, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Skipped is a document of a manifest that holds no Kubernetes object —
// one without apiVersion or kind, say a Helm values file or a CI
// configuration in a directory of manifests.
type Skipped struct {
	File   string
	Line   int
	Reason string
}

// Stream is what Read found in one manifest.
type Stream struct {
	Objects []Object
	Skipped []Skipped
}

// Read reads the objects of a manifest named file from r: YAML
// documents, or, when its first character is "{" or "[", JSON values one
// after another. It reads at most MaxBytes.
func Read(file string, r io.Reader) (*Stream, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxBytes+1))
	if err != nil {
		return nil, &Error{File: file, Err: err}
	}
	if len(data) > MaxBytes {
		return nil, &Error{File: file, Err: fmt.Errorf("larger than %d bytes", MaxBytes)}
	}
	return Parse(file, data)
}

// Parse reads the objects of the manifest data, named file.
func Parse(file string, data []byte) (*Stream, error) {
	s := &Stream{}
	trimmed := bytes.TrimLeftFunc(data, unicode.IsSpace)
	var err error
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		err = s.parseJSON(file, data)
	} else {
		err = s.parseYAML(file, data)
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// document is one YAML document or JSON value of a stream.
type document struct {
	data []byte
	// line and col are where data starts in the file (1-based); col
	// matters only for a JSON value that does not start a line.
	line, col int
}

// parseYAML splits data into documents as kubectl does (a line "---",
// possibly followed by blanks, separates them) and reads each.
func (s *Stream) parseYAML(file string, data []byte) error {
	line, start := 1, 1
	var cur []byte
	flush := func() error {
		err := s.document(file, document{data: cur, line: start, col: 1}, false)
		cur = nil
		return err
	}
	for len(data) > 0 {
		l := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			l = data[:i+1]
		}
		data = data[len(l):]
		line += breaks(l)
		if rest, ok := bytes.CutPrefix(l, []byte("---")); ok && len(bytes.TrimRightFunc(rest, unicode.IsSpace)) == 0 {
			if err := flush(); err != nil {
				return err
			}
			start = line
		} else {
			cur = append(cur, l...)
		}
	}
	return flush()
}

// breaks counts the line breaks in b as YAML does: "\r\n", "\n" and a
// "\r" alone are one each.
func breaks(b []byte) int {
	n := 0
	for i, c := range b {
		if c == '\n' || c == '\r' && (i+1 == len(b) || b[i+1] != '\n') {
			n++
		}
	}
	return n
}

// parseJSON reads a stream of JSON values.
func (s *Stream) parseJSON(file string, data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	lines := newLineIndex(data)
	for {
		var raw json.RawMessage
		end := dec.InputOffset()
		if err := dec.Decode(&raw); err == io.EOF {
			return nil
		} else if err != nil {
			var se *json.SyntaxError
			off := end
			if errors.As(err, &se) {
				off = se.Offset
			}
			l, _ := lines.at(int(off))
			return &Error{File: file, Line: l, Err: err}
		}
		// The value starts at the first byte after end that is not
		// white space.
		start := int(end) + len(data[end:]) - len(bytes.TrimLeftFunc(data[end:], unicode.IsSpace))
		l, c := lines.at(start)
		if err := s.document(file, document{data: raw, line: l, col: c}, true); err != nil {
			return err
		}
	}
}

// yamlLine finds the line numbers in yaml's error messages.
var yamlLine = regexp.MustCompile(`line (\d+)`)

// document reads one document, which may be empty, hold an object, or a
// List of them.
func (s *Stream) document(file string, d document, isJSON bool) error {
	if len(bytes.TrimSpace(d.data)) == 0 {
		return nil
	}
	var root yaml.Node
	if err := yaml.Unmarshal(d.data, &root); err != nil {
		// yaml counts lines from the document's start; say the file's.
		line := d.line
		msg := yamlLine.ReplaceAllStringFunc(err.Error(), func(m string) string {
			n, _ := strconv.Atoi(strings.TrimPrefix(m, "line "))
			return fmt.Sprintf("line %d", n+d.line-1)
		})
		if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
			n, _ := strconv.Atoi(m[1])
			line = n + d.line - 1
			// The line is the Error's: "f.yaml:4: yaml: mapping values …".
			msg = strings.Replace(msg, fmt.Sprintf("line %d: ", line), "", 1)
		}
		return &Error{File: file, Line: line, Err: errors.New(msg)}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil // comments only
	}
	node := root.Content[0]
	j, err := toJSON(d.data, isJSON)
	if err != nil {
		return &Error{File: file, Line: d.line + node.Line - 1, Err: err}
	}
	if bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
		return nil
	}
	base := Object{File: file, Item: -1, lineBase: d.line - 1, colBase: d.col - 1, firstRow: node.Line}
	if node.Kind != yaml.MappingNode || j[0] != '{' {
		s.Skipped = append(s.Skipped, Skipped{File: file, Line: base.lineBase + node.Line, Reason: "not an object"})
		return nil
	}
	base.node = node
	var head struct {
		Kind  any             `json:"kind"`
		Items json.RawMessage `json:"items"`
	}
	if err := json.Unmarshal(j, &head); err != nil {
		return &Error{File: file, Line: base.place(node).Line, Err: err}
	}
	kind, _ := head.Kind.(string)
	var list []json.RawMessage
	if strings.HasSuffix(kind, "List") && json.Unmarshal(head.Items, &list) == nil && list != nil {
		items, _ := valueOf(node, "items")
		for i, it := range list {
			o := base
			o.Item = i
			if items != nil && i < len(items.Content) {
				o.node = items.Content[i]
			} else {
				o.node = nil
			}
			if err := s.add(o, it); err != nil {
				return err
			}
		}
		return nil
	}
	return s.add(base, j)
}

// add adds an object, or notes why j is not one.
func (s *Stream) add(o Object, j []byte) error {
	line := o.lineBase + o.firstRow
	if o.node != nil {
		line = o.place(o.node).Line
	}
	if len(s.Objects) >= MaxObjects {
		return &Error{File: o.File, Line: line, Err: fmt.Errorf("more than %d objects", MaxObjects)}
	}
	var meta struct {
		APIVersion any `json:"apiVersion"`
		Kind       any `json:"kind"`
		Metadata   any `json:"metadata"`
	}
	if err := json.Unmarshal(j, &meta); err != nil {
		s.Skipped = append(s.Skipped, Skipped{File: o.File, Line: line, Reason: "not an object"})
		return nil
	}
	av, _ := meta.APIVersion.(string)
	kind, _ := meta.Kind.(string)
	if av == "" || kind == "" {
		s.Skipped = append(s.Skipped, Skipped{File: o.File, Line: line, Reason: "not a Kubernetes object: no apiVersion or kind"})
		return nil
	}
	o.APIVersion, o.Kind, o.JSON = av, kind, j
	if m, ok := meta.Metadata.(map[string]any); ok {
		o.Name, _ = m["name"].(string)
		o.Namespace, _ = m["namespace"].(string)
	}
	if o.node != nil {
		o.Pos = o.place(o.node)
	} else {
		o.Pos = Position{Line: line, Column: 1}
	}
	s.Objects = append(s.Objects, o)
	return nil
}

// valueOf returns the value of key in the mapping n.
func valueOf(n *yaml.Node, key string) (*yaml.Node, bool) {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		return nil, false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := resolve(n.Content[i]); k.Kind == yaml.ScalarNode && k.Value == key {
			v := resolve(n.Content[i+1])
			return v, v.Kind == yaml.SequenceNode || v.Kind == yaml.MappingNode
		}
	}
	return nil, false
}

// toJSON converts a document to JSON as kubectl does (sigs.k8s.io/yaml).
func toJSON(data []byte, isJSON bool) ([]byte, error) {
	if isJSON {
		var buf bytes.Buffer
		if err := json.Compact(&buf, data); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	return k8syaml.YAMLToJSON(data)
}

// lineIndex converts byte offsets to lines and columns.
type lineIndex struct{ starts []int }

func newLineIndex(data []byte) lineIndex {
	starts := []int{0}
	for i, b := range data {
		if b == '\n' || b == '\r' && (i+1 == len(data) || data[i+1] != '\n') {
			starts = append(starts, i+1)
		}
	}
	return lineIndex{starts: starts}
}

// at returns the line and column (1-based, in bytes) of offset.
func (x lineIndex) at(offset int) (line, col int) {
	lo, hi := 0, len(x.starts)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if x.starts[mid] <= offset {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo + 1, offset - x.starts[lo] + 1
}
