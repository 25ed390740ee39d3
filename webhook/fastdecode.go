package webhook

import (
	"unicode/utf8"

	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// decodeFast decodes an AdmissionReview and the objects it carries in one
// pass over its bytes, without reflection, into exactly what
// encoding/json gives (decodeTwice, the reference). It answers ok only
// when it can vouch for that: a body that is not valid JSON, a value of
// the wrong type, a repeated member, a member named in another case or
// with escapes, a null in a list or a map, invalid UTF-8, a response, or
// nesting deeper than maxFastDepth, and a review decodeOnce would refuse
// (wrong apiVersion or kind, no request or uid), are all left to
// decodeTwice: none of them comes from an API server, and decodeTwice's
// errors are the ones the caller sees. FuzzDecodeOnce compares the two.
//
// Reflection-based decoding of a Deployment's review was the largest
// cost of an allowed review in the shipped binary (a quarter of its CPU).
func decodeFast(body []byte) (decoded, bool) {
	p := &parser{b: body}
	var rv struct {
		typeMeta metav1.TypeMeta
		req      *admissionv1.AdmissionRequest
		obj, old *wireObject
	}
	ok := p.object(func(key []byte) bool {
		switch string(key) {
		case `"apiVersion"`:
			return p.once(0) && p.string(&rv.typeMeta.APIVersion)
		case `"kind"`:
			return p.once(1) && p.string(&rv.typeMeta.Kind)
		case `"request"`:
			if !p.once(2) {
				return false
			}
			if p.null() {
				return true
			}
			rv.req = &admissionv1.AdmissionRequest{}
			return p.request(rv.req, &rv.obj, &rv.old)
		case `"response"`:
			return p.once(3) && p.null()
		}
		return p.unknown(key, "apiVersion", "kind", "request", "response")
	})
	if !ok || !p.end() {
		return decoded{}, false
	}
	if rv.typeMeta.APIVersion != "admission.k8s.io/v1" || rv.typeMeta.Kind != "AdmissionReview" || rv.req == nil || rv.req.UID == "" {
		return decoded{}, false
	}
	return decoded{typeMeta: rv.typeMeta, req: rv.req, once: true, obj: rv.obj, old: rv.old}, true
}

// maxFastDepth bounds the nesting decodeFast follows; encoding/json's
// own bound is 10000.
const maxFastDepth = 512

// parser reads JSON from b at i. Its methods read one value each, after
// any whitespace, and return false when they cannot vouch for it.
type parser struct {
	b     []byte
	i     int
	depth int
	// seen is a bit per known member of the objects being read, one
	// word per level of nesting: a member seen twice is refused. The
	// members decodeFast knows are all less deep than its length.
	seen [16]uint32
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

// once marks member bit of the object being read as seen; false if it
// was already.
func (p *parser) once(bit uint) bool {
	if p.depth >= len(p.seen) {
		return false
	}
	s := &p.seen[p.depth]
	if *s&(1<<bit) != 0 {
		return false
	}
	*s |= 1 << bit
	return true
}

// object reads an object, calling member with each key, quotes and
// all, and the parser at its value, which member must consume.
func (p *parser) object(member func(key []byte) bool) bool {
	if p.peek() != '{' || p.depth == maxFastDepth {
		return false
	}
	p.i++
	p.depth++
	if p.depth < len(p.seen) {
		p.seen[p.depth] = 0
	}
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
// which elem must consume. A null is not an array: the caller reads it
// first if it may come.
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
		if !elem() {
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

// string reads a string into dst; a null leaves dst alone.
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

// boolPtr reads a boolean into a new *dst; a null leaves dst alone.
func (p *parser) boolPtr(dst **bool) bool {
	switch {
	case p.null():
		return true
	case p.literal("true"):
		v := true
		*dst = &v
	case p.literal("false"):
		v := false
		*dst = &v
	default:
		return false
	}
	return true
}

// stringPtr reads a string into a new *dst; a null leaves dst alone.
func stringPtr[S ~string](p *parser, dst **S) bool {
	if p.null() {
		return true
	}
	var s string
	if !p.string(&s) {
		return false
	}
	v := S(s)
	*dst = &v
	return true
}

// typed reads a string into a string type.
func typed[S ~string](p *parser, dst *S) bool {
	s := string(*dst)
	ok := p.string(&s)
	*dst = S(s)
	return ok
}

// strings reads a list of strings; a null leaves dst alone.
func (p *parser) strings(dst *[]string) bool {
	if p.null() {
		return true
	}
	out := []string{}
	ok := p.array(func() bool {
		var s string
		out = append(out, "")
		if p.peek() != '"' || !p.string(&s) {
			return false
		}
		out[len(out)-1] = s
		return true
	})
	*dst = out
	return ok
}

// stringMap reads an object of strings; a null leaves dst alone.
func (p *parser) stringMap(dst *map[string]string) bool {
	if p.null() {
		return true
	}
	m := map[string]string{}
	*dst = m
	return p.object(func(key []byte) bool {
		k, ok := text(key)
		if _, dup := m[k]; !ok || dup || p.peek() != '"' {
			return false
		}
		var v string
		ok = p.string(&v)
		m[k] = v
		return ok
	})
}

// unknown skips the value of a member no field is named after, unless
// encoding/json would match the key to one of names, without regard to
// case, or the key is not plain ASCII (which may match one under
// Unicode's case folding).
func (p *parser) unknown(key []byte, names ...string) bool {
	if !plain(key) {
		return false
	}
	k := key[1 : len(key)-1]
	for _, n := range names {
		if equalFoldASCII(k, n) {
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

// request reads an admission request; its objects go to obj and old.
func (p *parser) request(r *admissionv1.AdmissionRequest, obj, old **wireObject) bool {
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"uid"`:
			return p.once(0) && typed(p, &r.UID)
		case `"kind"`:
			return p.once(1) && p.gvk(&r.Kind)
		case `"resource"`:
			return p.once(2) && p.gvr(&r.Resource)
		case `"subResource"`:
			return p.once(3) && p.string(&r.SubResource)
		case `"requestKind"`:
			if !p.once(4) {
				return false
			}
			if p.null() {
				return true
			}
			r.RequestKind = &metav1.GroupVersionKind{}
			return p.gvk(r.RequestKind)
		case `"requestResource"`:
			if !p.once(5) {
				return false
			}
			if p.null() {
				return true
			}
			r.RequestResource = &metav1.GroupVersionResource{}
			return p.gvr(r.RequestResource)
		case `"requestSubResource"`:
			return p.once(6) && p.string(&r.RequestSubResource)
		case `"name"`:
			return p.once(7) && p.string(&r.Name)
		case `"namespace"`:
			return p.once(8) && p.string(&r.Namespace)
		case `"operation"`:
			return p.once(9) && typed(p, &r.Operation)
		case `"userInfo"`:
			return p.once(10) && p.userInfo(&r.UserInfo)
		case `"object"`:
			return p.once(11) && p.wireObject(obj)
		case `"oldObject"`:
			return p.once(12) && p.wireObject(old)
		case `"dryRun"`:
			return p.once(13) && p.boolPtr(&r.DryRun)
		case `"options"`:
			return p.once(14) && p.raw(&r.Options.Raw)
		}
		return p.unknown(key, "uid", "kind", "resource", "subResource", "requestKind", "requestResource",
			"requestSubResource", "name", "namespace", "operation", "userInfo", "object", "oldObject", "dryRun", "options")
	})
}

func (p *parser) gvk(k *metav1.GroupVersionKind) bool {
	if p.null() {
		return true
	}
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"group"`:
			return p.once(0) && p.string(&k.Group)
		case `"version"`:
			return p.once(1) && p.string(&k.Version)
		case `"kind"`:
			return p.once(2) && p.string(&k.Kind)
		}
		return p.unknown(key, "group", "version", "kind")
	})
}

func (p *parser) gvr(r *metav1.GroupVersionResource) bool {
	if p.null() {
		return true
	}
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"group"`:
			return p.once(0) && p.string(&r.Group)
		case `"version"`:
			return p.once(1) && p.string(&r.Version)
		case `"resource"`:
			return p.once(2) && p.string(&r.Resource)
		}
		return p.unknown(key, "group", "version", "resource")
	})
}

func (p *parser) userInfo(u *authenticationv1.UserInfo) bool {
	if p.null() {
		return true
	}
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"username"`:
			return p.once(0) && p.string(&u.Username)
		case `"uid"`:
			return p.once(1) && p.string(&u.UID)
		case `"groups"`:
			return p.once(2) && p.strings(&u.Groups)
		case `"extra"`:
			if !p.once(3) {
				return false
			}
			if p.null() {
				return true
			}
			u.Extra = map[string]authenticationv1.ExtraValue{}
			return p.object(func(key []byte) bool {
				k, ok := text(key)
				if _, dup := u.Extra[k]; !ok || dup || p.null() {
					return false
				}
				var v []string
				ok = p.strings(&v)
				u.Extra[k] = v
				return ok
			})
		}
		return p.unknown(key, "username", "uid", "groups", "extra")
	})
}

// wireObject reads a Kubernetes object into a new *dst; a null leaves
// dst alone.
func (p *parser) wireObject(dst **wireObject) bool {
	if p.null() {
		return true
	}
	o := &wireObject{}
	*dst = o
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"metadata"`:
			return p.once(0) && p.meta(&o.Metadata)
		case `"spec"`:
			if !p.once(1) {
				return false
			}
			if p.null() {
				return true
			}
			return p.object(func(key []byte) bool {
				switch string(key) {
				case `"template"`:
					return p.once(podSpecMembers) && p.template(&o.Spec.Template)
				case `"jobTemplate"`:
					if !p.once(podSpecMembers + 1) {
						return false
					}
					if p.null() {
						return true
					}
					o.Spec.JobTemplate = &struct {
						Spec struct {
							Template *wireTemplate `json:"template"`
						} `json:"spec"`
					}{}
					return p.object(func(key []byte) bool {
						if string(key) != `"spec"` {
							return p.unknown(key, "spec")
						}
						if !p.once(0) {
							return false
						}
						if p.null() {
							return true
						}
						return p.object(func(key []byte) bool {
							if string(key) != `"template"` {
								return p.unknown(key, "template")
							}
							return p.once(0) && p.template(&o.Spec.JobTemplate.Spec.Template)
						})
					})
				}
				if known, ok := p.podSpecMember(key, &o.Spec.wirePodSpec); known {
					return ok
				}
				return p.unknown(key, "initContainers", "containers", "ephemeralContainers", "volumes", "imagePullSecrets",
					"serviceAccountName", "template", "jobTemplate")
			})
		}
		return p.unknown(key, "metadata", "spec")
	})
}

// template reads a pod template into a new *dst; a null leaves dst
// alone.
func (p *parser) template(dst **wireTemplate) bool {
	if p.null() {
		return true
	}
	t := &wireTemplate{}
	*dst = t
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"metadata"`:
			return p.once(0) && p.meta(&t.Metadata)
		case `"spec"`:
			if !p.once(1) {
				return false
			}
			if p.null() {
				return true
			}
			return p.object(func(key []byte) bool {
				if known, ok := p.podSpecMember(key, &t.Spec); known {
					return ok
				}
				return p.unknown(key, "initContainers", "containers", "ephemeralContainers", "volumes", "imagePullSecrets", "serviceAccountName")
			})
		}
		return p.unknown(key, "metadata", "spec")
	})
}

// podSpecMembers is the number of members podSpecMember knows.
const podSpecMembers = 6

// podSpecMember reads the member key of a pod spec into s; known is
// false when key is none of wirePodSpec's.
func (p *parser) podSpecMember(key []byte, s *wirePodSpec) (known, ok bool) {
	switch string(key) {
	case `"initContainers"`:
		return true, p.once(0) && p.containers(&s.InitContainers)
	case `"containers"`:
		return true, p.once(1) && p.containers(&s.Containers)
	case `"ephemeralContainers"`:
		return true, p.once(2) && p.containers(&s.EphemeralContainers)
	case `"volumes"`:
		if !p.once(3) {
			return true, false
		}
		if p.null() {
			return true, true
		}
		s.Volumes = []wireVolume{}
		return true, p.array(func() bool {
			s.Volumes = append(s.Volumes, wireVolume{})
			v := &s.Volumes[len(s.Volumes)-1]
			return p.object(func(key []byte) bool {
				switch string(key) {
				case `"name"`:
					return p.once(0) && p.string(&v.Name)
				case `"hostPath"`:
					if !p.once(1) {
						return false
					}
					if p.null() {
						return true
					}
					v.HostPath = &corev1.HostPathVolumeSource{}
					return p.object(func(key []byte) bool {
						switch string(key) {
						case `"path"`:
							return p.once(0) && p.string(&v.HostPath.Path)
						case `"type"`:
							return p.once(1) && stringPtr(p, &v.HostPath.Type)
						}
						return p.unknown(key, "path", "type")
					})
				}
				return p.unknown(key, "name", "hostPath")
			})
		})
	case `"imagePullSecrets"`:
		if !p.once(4) {
			return true, false
		}
		if p.null() {
			return true, true
		}
		s.ImagePullSecrets = []corev1.LocalObjectReference{}
		return true, p.array(func() bool {
			s.ImagePullSecrets = append(s.ImagePullSecrets, corev1.LocalObjectReference{})
			r := &s.ImagePullSecrets[len(s.ImagePullSecrets)-1]
			return p.object(func(key []byte) bool {
				if string(key) != `"name"` {
					return p.unknown(key, "name")
				}
				return p.once(0) && p.string(&r.Name)
			})
		})
	case `"serviceAccountName"`:
		return true, p.once(5) && p.string(&s.ServiceAccountName)
	}
	return false, false
}

// containers reads a list of containers; a null leaves dst alone.
func (p *parser) containers(dst *[]wireContainer) bool {
	if p.null() {
		return true
	}
	cs := []wireContainer{}
	ok := p.array(func() bool {
		cs = append(cs, wireContainer{})
		c := &cs[len(cs)-1]
		return p.object(func(key []byte) bool {
			switch string(key) {
			case `"name"`:
				return p.once(0) && p.string(&c.Name)
			case `"image"`:
				return p.once(1) && p.string(&c.Image)
			case `"imagePullPolicy"`:
				return p.once(2) && typed(p, &c.ImagePullPolicy)
			case `"volumeMounts"`:
				if !p.once(3) {
					return false
				}
				if p.null() {
					return true
				}
				c.VolumeMounts = []corev1.VolumeMount{}
				return p.array(func() bool {
					c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{})
					return p.volumeMount(&c.VolumeMounts[len(c.VolumeMounts)-1])
				})
			}
			return p.unknown(key, "name", "image", "imagePullPolicy", "volumeMounts")
		})
	})
	*dst = cs
	return ok
}

func (p *parser) volumeMount(m *corev1.VolumeMount) bool {
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"name"`:
			return p.once(0) && p.string(&m.Name)
		case `"readOnly"`:
			if !p.once(1) {
				return false
			}
			switch {
			case p.null():
			case p.literal("true"):
				m.ReadOnly = true
			case p.literal("false"):
				m.ReadOnly = false
			default:
				return false
			}
			return true
		case `"recursiveReadOnly"`:
			return p.once(2) && stringPtr(p, &m.RecursiveReadOnly)
		case `"mountPath"`:
			return p.once(3) && p.string(&m.MountPath)
		case `"subPath"`:
			return p.once(4) && p.string(&m.SubPath)
		case `"mountPropagation"`:
			return p.once(5) && stringPtr(p, &m.MountPropagation)
		case `"subPathExpr"`:
			return p.once(6) && p.string(&m.SubPathExpr)
		case `"bindMountOptions"`:
			return p.once(7) && p.strings(&m.BindMountOptions)
		}
		return p.unknown(key, "name", "readOnly", "recursiveReadOnly", "mountPath", "subPath", "mountPropagation", "subPathExpr",
			"bindMountOptions")
	})
}

func (p *parser) meta(m *wireMeta) bool {
	if p.null() {
		return true
	}
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"name"`:
			return p.once(0) && p.string(&m.Name)
		case `"labels"`:
			return p.once(1) && p.stringMap(&m.Labels)
		case `"annotations"`:
			return p.once(2) && p.stringMap(&m.Annotations)
		case `"ownerReferences"`:
			if !p.once(3) {
				return false
			}
			if p.null() {
				return true
			}
			m.OwnerReferences = []metav1.OwnerReference{}
			return p.array(func() bool {
				m.OwnerReferences = append(m.OwnerReferences, metav1.OwnerReference{})
				return p.ownerReference(&m.OwnerReferences[len(m.OwnerReferences)-1])
			})
		}
		return p.unknown(key, "name", "labels", "annotations", "ownerReferences")
	})
}

func (p *parser) ownerReference(r *metav1.OwnerReference) bool {
	return p.object(func(key []byte) bool {
		switch string(key) {
		case `"apiVersion"`:
			return p.once(0) && p.string(&r.APIVersion)
		case `"kind"`:
			return p.once(1) && p.string(&r.Kind)
		case `"name"`:
			return p.once(2) && p.string(&r.Name)
		case `"uid"`:
			return p.once(3) && typed[types.UID](p, &r.UID)
		case `"controller"`:
			return p.once(4) && p.boolPtr(&r.Controller)
		case `"blockOwnerDeletion"`:
			return p.once(5) && p.boolPtr(&r.BlockOwnerDeletion)
		}
		return p.unknown(key, "apiVersion", "kind", "name", "uid", "controller", "blockOwnerDeletion")
	})
}
