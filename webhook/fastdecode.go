package webhook

import (
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// decodeFast decodes an AdmissionReview and the objects it carries in one
// pass over its bytes, without reflection, into exactly what
// encoding/json gives (decodeTwice, the reference). It answers ok only
// when it can vouch for that: a body that is not valid JSON, a value of
// the wrong type, a repeated member, a member named in another case or
// with escapes, a repeated key in a map, invalid UTF-8, a response,
// nesting deeper than maxFastDepth, an object with more list elements
// than MaxListElements (refused by decodeWorkload), and a review decodeOnce would refuse
// (wrong apiVersion or kind, no request or uid), are all left to
// decodeTwice: none of them comes from an API server, and decodeTwice's
// errors are the ones the caller sees. FuzzDecodeOnce compares the two.
//
// Reflection-based decoding of a Deployment's review was the largest
// cost of an allowed review in the shipped binary (a quarter of its CPU).
func decodeFast(body []byte) (decoded, bool) {
	p := &parser{b: body}
	var d decoded
	ok := p.members(
		member{`"apiVersion"`, func() bool { return p.string(&d.typeMeta.APIVersion) }},
		member{`"kind"`, func() bool { return p.string(&d.typeMeta.Kind) }},
		member{`"request"`, func() bool {
			return ptr(p, &d.req, func(r *admissionv1.AdmissionRequest) bool { return p.request(r, &d) })
		}},
		member{`"response"`, p.null},
	)
	if !ok || !p.end() {
		return decoded{}, false
	}
	if d.typeMeta.APIVersion != "admission.k8s.io/v1" || d.typeMeta.Kind != "AdmissionReview" || d.req == nil || d.req.UID == "" {
		return decoded{}, false
	}
	d.once = true
	return d, true
}

// maxFastDepth bounds the nesting decodeFast follows; encoding/json's
// own bound is 10000.
const maxFastDepth = 512

// parser reads JSON from b at i. Its methods read one value each, after
// any whitespace, and return false when they cannot vouch for it. A
// null leaves what a method reads into alone, as encoding/json does (it
// sets a pointer, slice or map to nil, which is what decodeFast finds
// there: it refuses repeated members).
type parser struct {
	b     []byte
	i     int
	depth int
	// elems counts list elements: since the start of the object being
	// read (wireObject), or of the value (tooManyElements).
	elems int
}

// MaxListElements bounds the list elements an object may hold, in all
// its lists at any depth, for the webhook to decode it; an object with
// more is refused (*DecodeError). A few bytes of JSON ("{}") become a
// list element of tens to hundreds of bytes: unbounded, a 1 MiB body of
// empty containers took 257 MB to decode. A pod template holds tens.
const MaxListElements = 10000

// tooManyElements reports whether the JSON value raw holds more than
// MaxListElements list elements. It counts as far as raw is valid JSON
// and nested no deeper than maxFastDepth, where the lists decoded are.
func tooManyElements(raw []byte) bool {
	p := &parser{b: raw}
	p.skip()
	return p.elems > MaxListElements
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// peek returns the next byte after whitespace, or 0 at the end.
func (p *parser) peek() byte {
	p.ws()
	if p.i < len(p.b) {
		return p.b[p.i]
	}
	return 0
}

// end reports whether only whitespace is left.
func (p *parser) end() bool {
	p.ws()
	return p.i == len(p.b)
}

// literal consumes lit if it comes next.
func (p *parser) literal(lit string) bool {
	p.ws()
	if len(p.b)-p.i >= len(lit) && string(p.b[p.i:p.i+len(lit)]) == lit {
		p.i += len(lit)
		return true
	}
	return false
}

// null consumes a null if it comes next.
func (p *parser) null() bool { return p.literal("null") }

// member is a member of an object that decodeFast knows: its key,
// quotes and all, and how to read its value.
type member struct {
	key  string
	read func() bool
}

// members reads an object whose members are ms: each at most once, any
// other skipped unless encoding/json would take it for one of ms.
func (p *parser) members(ms ...member) bool {
	if p.null() {
		return true
	}
	var seen uint32
	return p.object(func(key []byte) bool {
		for i := range ms {
			if string(key) == ms[i].key {
				if seen&(1<<i) != 0 {
					return false
				}
				seen |= 1 << i
				return ms[i].read()
			}
		}
		return p.unknown(key, ms)
	})
}

// unknown skips the value of a member none of ms is, unless
// encoding/json would match its key to one of them without regard to
// case, or the key is not plain ASCII (which may match one under
// Unicode's case folding).
func (p *parser) unknown(key []byte, ms []member) bool {
	if !plain(key) {
		return false
	}
	for i := range ms {
		if equalFoldASCII(key, ms[i].key) {
			return false
		}
	}
	return p.skip()
}

func equalFoldASCII(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		if lowerASCII(b[i]) != lowerASCII(s[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// object reads an object, calling member with each key, quotes and
// all, and the parser at its value, which member must consume.
func (p *parser) object(member func(key []byte) bool) bool {
	if p.peek() != '{' || p.depth == maxFastDepth {
		return false
	}
	p.i++
	p.depth++
	if p.peek() == '}' {
		p.i++
		p.depth--
		return true
	}
	for {
		p.ws()
		key, ok := p.str()
		if !ok || p.peek() != ':' {
			return false
		}
		p.i++
		if !member(key) {
			return false
		}
		switch p.peek() {
		case ',':
			p.i++
		case '}':
			p.i++
			p.depth--
			return true
		default:
			return false
		}
	}
}

// array reads an array, calling elem with the parser at each element,
// which elem must consume.
func (p *parser) array(elem func() bool) bool {
	if p.peek() != '[' || p.depth == maxFastDepth {
		return false
	}
	p.i++
	p.depth++
	if p.peek() == ']' {
		p.i++
		p.depth--
		return true
	}
	for {
		if p.elems++; p.elems > MaxListElements || !elem() {
			return false
		}
		switch p.peek() {
		case ',':
			p.i++
		case ']':
			p.i++
			p.depth--
			return true
		default:
			return false
		}
	}
}

// str reads a string literal and returns it with its quotes.
func (p *parser) str() ([]byte, bool) {
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return nil, false
	}
	start := p.i
	for p.i++; p.i < len(p.b); {
		switch c := p.b[p.i]; {
		case c == '"':
			p.i++
			return p.b[start:p.i], true
		case c == '\\':
			if p.i+1 == len(p.b) {
				return nil, false
			}
			switch p.b[p.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				p.i += 2
			case 'u':
				if len(p.b)-p.i < 6 || !isHex(p.b[p.i+2]) || !isHex(p.b[p.i+3]) || !isHex(p.b[p.i+4]) || !isHex(p.b[p.i+5]) {
					return nil, false
				}
				p.i += 6
			default:
				return nil, false
			}
		case c < 0x20:
			return nil, false
		default:
			p.i++
		}
	}
	return nil, false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// plain reports whether the string literal s has neither escapes nor
// bytes beyond ASCII: its text is what is between its quotes.
func plain(s []byte) bool {
	for _, c := range s {
		if c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// text is what the string literal s says.
func text(s []byte) (string, bool) {
	if plain(s) {
		return string(s[1 : len(s)-1]), true
	}
	out, err := jsontext.AppendUnquote(nil, s)
	if err != nil {
		return "", false // invalid UTF-8 or surrogates: encoding/json would replace them
	}
	return string(out), true
}

// string reads a string.
func (p *parser) string(dst *string) bool {
	if p.null() {
		return true
	}
	s, ok := p.str()
	if !ok {
		return false
	}
	*dst, ok = text(s)
	return ok
}

// typed reads a string into a string type.
func typed[S ~string](p *parser, dst *S) bool {
	s := string(*dst)
	ok := p.string(&s)
	*dst = S(s)
	return ok
}

// boolean reads a boolean.
func (p *parser) boolean(dst *bool) bool {
	switch {
	case p.null():
	case p.literal("true"):
		*dst = true
	case p.literal("false"):
		*dst = false
	default:
		return false
	}
	return true
}

// ptr reads a value with read into a new *dst, unless it is null.
func ptr[T any](p *parser, dst **T, read func(*T) bool) bool {
	if p.null() {
		return true
	}
	*dst = new(T)
	return read(*dst)
}

// list reads a list, each element with read, into a new slice.
func list[T any](p *parser, dst *[]T, read func(*T) bool) bool {
	if p.null() {
		return true
	}
	out := []T{}
	var zero T
	ok := p.array(func() bool {
		out = append(out, zero)
		return read(&out[len(out)-1])
	})
	*dst = out
	return ok
}

// dict reads an object, each value with read, into a new map.
func dict[V any](p *parser, dst *map[string]V, read func(*V) bool) bool {
	if p.null() {
		return true
	}
	m := map[string]V{}
	*dst = m
	var v, zero V // v is on the heap (read may keep it): once per map
	return p.object(func(key []byte) bool {
		k, ok := text(key)
		if _, dup := m[k]; !ok || dup {
			return false // encoding/json keeps the last of a repeated key
		}
		v = zero
		ok = read(&v)
		m[k] = v
		return ok
	})
}

// skip reads any value, checking its syntax.
func (p *parser) skip() bool {
	switch p.peek() {
	case '{':
		return p.object(func([]byte) bool { return p.skip() })
	case '[':
		return p.array(p.skip)
	case '"':
		_, ok := p.str()
		return ok
	case 't':
		return p.literal("true")
	case 'f':
		return p.literal("false")
	case 'n':
		return p.null()
	}
	return p.number()
}

// number reads a number, checking its syntax.
func (p *parser) number() bool {
	b, i := p.b, p.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && '1' <= b[i] && b[i] <= '9':
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i == len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i == len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	p.i = i
	return true
}

// raw reads any value and keeps its bytes, as runtime.RawExtension's
// UnmarshalJSON does: a null keeps nothing.
func (p *parser) raw(dst *[]byte) bool {
	if p.null() {
		return true
	}
	start := p.i
	if !p.skip() {
		return false
	}
	*dst = append([]byte(nil), p.b[start:p.i]...)
	return true
}

// The members of the types decodeFast fills. TestDecodeFastKnowsEveryMember
// checks that they are every member encoding/json knows of those types.

// request reads an admission request, its objects into d.
func (p *parser) request(r *admissionv1.AdmissionRequest, d *decoded) bool {
	return p.members(
		member{`"uid"`, func() bool { return typed(p, &r.UID) }},
		member{`"kind"`, func() bool { return p.gvk(&r.Kind) }},
		member{`"resource"`, func() bool { return p.gvr(&r.Resource) }},
		member{`"subResource"`, func() bool { return p.string(&r.SubResource) }},
		member{`"requestKind"`, func() bool { return ptr(p, &r.RequestKind, p.gvk) }},
		member{`"requestResource"`, func() bool { return ptr(p, &r.RequestResource, p.gvr) }},
		member{`"requestSubResource"`, func() bool { return p.string(&r.RequestSubResource) }},
		member{`"name"`, func() bool { return p.string(&r.Name) }},
		member{`"namespace"`, func() bool { return p.string(&r.Namespace) }},
		member{`"operation"`, func() bool { return typed(p, &r.Operation) }},
		member{`"userInfo"`, func() bool { return p.userInfo(&r.UserInfo) }},
		member{`"object"`, func() bool { return ptr(p, &d.obj, p.wireObject) }},
		member{`"oldObject"`, func() bool { return ptr(p, &d.old, p.wireObject) }},
		member{`"dryRun"`, func() bool { return ptr(p, &r.DryRun, p.boolean) }},
		member{`"options"`, func() bool { return p.raw(&r.Options.Raw) }},
	)
}

func (p *parser) gvk(k *metav1.GroupVersionKind) bool {
	return p.members(
		member{`"group"`, func() bool { return p.string(&k.Group) }},
		member{`"version"`, func() bool { return p.string(&k.Version) }},
		member{`"kind"`, func() bool { return p.string(&k.Kind) }},
	)
}

func (p *parser) gvr(r *metav1.GroupVersionResource) bool {
	return p.members(
		member{`"group"`, func() bool { return p.string(&r.Group) }},
		member{`"version"`, func() bool { return p.string(&r.Version) }},
		member{`"resource"`, func() bool { return p.string(&r.Resource) }},
	)
}

func (p *parser) userInfo(u *authenticationv1.UserInfo) bool {
	return p.members(
		member{`"username"`, func() bool { return p.string(&u.Username) }},
		member{`"uid"`, func() bool { return p.string(&u.UID) }},
		member{`"groups"`, func() bool { return list(p, &u.Groups, p.string) }},
		member{`"extra"`, func() bool {
			return dict(p, &u.Extra, func(v *authenticationv1.ExtraValue) bool { return list(p, (*[]string)(v), p.string) })
		}},
	)
}

// wireObject reads a Kubernetes object: its metadata, and in its spec a
// pod's, a template's or a job template's.
func (p *parser) wireObject(o *wireObject) bool {
	p.elems = 0 // each object is bounded as decodeWorkload bounds it
	s := &o.Spec
	return p.members(
		member{`"metadata"`, func() bool { return p.meta(&o.Metadata) }},
		member{`"spec"`, func() bool {
			return p.podSpec(&s.wirePodSpec,
				member{`"template"`, func() bool { return ptr(p, &s.Template, p.template) }},
				member{`"jobTemplate"`, func() bool {
					return ptr(p, &s.JobTemplate, func(jt *wireJobTemplate) bool {
						return p.members(member{`"spec"`, func() bool {
							return p.members(member{`"template"`, func() bool { return ptr(p, &jt.Spec.Template, p.template) }})
						}})
					})
				}},
			)
		}},
	)
}

func (p *parser) template(t *wireTemplate) bool {
	return p.members(
		member{`"metadata"`, func() bool { return p.meta(&t.Metadata) }},
		member{`"spec"`, func() bool { return p.podSpec(&t.Spec) }},
	)
}

// podSpec reads a pod spec, whose object may have more members.
func (p *parser) podSpec(s *wirePodSpec, more ...member) bool {
	// An array, not append, keeps the members and their closures off the
	// heap.
	ms := [8]member{
		{`"initContainers"`, func() bool { return list(p, &s.InitContainers, p.container) }},
		{`"containers"`, func() bool { return list(p, &s.Containers, p.container) }},
		{`"ephemeralContainers"`, func() bool { return list(p, &s.EphemeralContainers, p.container) }},
		{`"volumes"`, func() bool { return list(p, &s.Volumes, p.volume) }},
		{`"imagePullSecrets"`, func() bool {
			return list(p, &s.ImagePullSecrets, func(r *corev1.LocalObjectReference) bool {
				return p.members(member{`"name"`, func() bool { return p.string(&r.Name) }})
			})
		}},
		{`"serviceAccountName"`, func() bool { return p.string(&s.ServiceAccountName) }},
	}
	n := 6
	for _, m := range more {
		ms[n] = m
		n++
	}
	return p.members(ms[:n]...)
}

func (p *parser) container(c *wireContainer) bool {
	return p.members(
		member{`"name"`, func() bool { return p.string(&c.Name) }},
		member{`"image"`, func() bool { return p.string(&c.Image) }},
		member{`"imagePullPolicy"`, func() bool { return typed(p, &c.ImagePullPolicy) }},
		member{`"volumeMounts"`, func() bool { return list(p, &c.VolumeMounts, p.volumeMount) }},
	)
}

func (p *parser) volumeMount(m *corev1.VolumeMount) bool {
	return p.members(
		member{`"name"`, func() bool { return p.string(&m.Name) }},
		member{`"readOnly"`, func() bool { return p.boolean(&m.ReadOnly) }},
		member{`"recursiveReadOnly"`, func() bool {
			return ptr(p, &m.RecursiveReadOnly, func(v *corev1.RecursiveReadOnlyMode) bool { return typed(p, v) })
		}},
		member{`"mountPath"`, func() bool { return p.string(&m.MountPath) }},
		member{`"subPath"`, func() bool { return p.string(&m.SubPath) }},
		member{`"mountPropagation"`, func() bool {
			return ptr(p, &m.MountPropagation, func(v *corev1.MountPropagationMode) bool { return typed(p, v) })
		}},
		member{`"subPathExpr"`, func() bool { return p.string(&m.SubPathExpr) }},
		member{`"bindMountOptions"`, func() bool { return list(p, &m.BindMountOptions, p.string) }},
	)
}

func (p *parser) volume(v *wireVolume) bool {
	return p.members(
		member{`"name"`, func() bool { return p.string(&v.Name) }},
		member{`"hostPath"`, func() bool {
			return ptr(p, &v.HostPath, func(h *corev1.HostPathVolumeSource) bool {
				return p.members(
					member{`"path"`, func() bool { return p.string(&h.Path) }},
					member{`"type"`, func() bool { return ptr(p, &h.Type, func(t *corev1.HostPathType) bool { return typed(p, t) }) }},
				)
			})
		}},
	)
}

func (p *parser) meta(m *wireMeta) bool {
	return p.members(
		member{`"name"`, func() bool { return p.string(&m.Name) }},
		member{`"labels"`, func() bool { return dict(p, &m.Labels, p.string) }},
		member{`"annotations"`, func() bool { return dict(p, &m.Annotations, p.string) }},
		member{`"ownerReferences"`, func() bool { return list(p, &m.OwnerReferences, p.ownerReference) }},
	)
}

func (p *parser) ownerReference(r *metav1.OwnerReference) bool {
	return p.members(
		member{`"apiVersion"`, func() bool { return p.string(&r.APIVersion) }},
		member{`"kind"`, func() bool { return p.string(&r.Kind) }},
		member{`"name"`, func() bool { return p.string(&r.Name) }},
		member{`"uid"`, func() bool { return typed(p, &r.UID) }},
		member{`"controller"`, func() bool { return ptr(p, &r.Controller, p.boolean) }},
		member{`"blockOwnerDeletion"`, func() bool { return ptr(p, &r.BlockOwnerDeletion, p.boolean) }},
	)
}
