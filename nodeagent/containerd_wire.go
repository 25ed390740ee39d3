package nodeagent

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// This file encodes and decodes the few containerd API messages the
// containerd watcher uses, field for field as in
// github.com/containerd/containerd/api (types/event.proto,
// events/image.proto, services/images/v1/images.proto,
// services/content/v1/content.proto). The generated packages of that
// module import github.com/containerd/ttrpc and
// github.com/containerd/typeurl/v2, which this module's go.sum does not
// hold; the wire format is stable (protobuf field numbers never change in
// containerd's v1 API), and only the fields below are read. Unknown
// fields are skipped, as protobuf requires.

// ctrEnvelope is an event from containerd's events service.
type ctrEnvelope struct {
	Timestamp time.Time
	Namespace string
	Topic     string
	TypeURL   string
	Event     []byte // the Any's value
}

// ctrImageEvent is an ImageCreate or ImageUpdate event.
type ctrImageEvent struct {
	Name   string
	Labels map[string]string
}

// ctrDescriptor is a content descriptor (types.Descriptor).
type ctrDescriptor struct {
	MediaType string
	Digest    string
	Size      int64
}

// ctrImage is an image record of the images service.
type ctrImage struct {
	Name      string
	Labels    map[string]string
	Target    ctrDescriptor
	CreatedAt time.Time
	UpdatedAt time.Time
}

// ctrContentInfo is a content store entry's info.
type ctrContentInfo struct {
	Digest string
	Size   int64
	Labels map[string]string
}

// errWire is returned for a message that is not valid protobuf.
var errWire = errors.New("malformed protobuf message")

// wireFields calls f for each field of message b, with the field's raw
// value: a varint, or the bytes of a length-delimited field. Fixed-size
// and group fields are skipped.
func wireFields(b []byte, f func(num protowire.Number, v uint64, data []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %v", errWire, protowire.ParseError(n))
		}
		b = b[n:]
		switch typ {
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return fmt.Errorf("%w: field %d: %v", errWire, num, protowire.ParseError(m))
			}
			b = b[m:]
			if err := f(num, v, nil); err != nil {
				return err
			}
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("%w: field %d: %v", errWire, num, protowire.ParseError(m))
			}
			b = b[m:]
			if err := f(num, 0, v); err != nil {
				return err
			}
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return fmt.Errorf("%w: field %d: %v", errWire, num, protowire.ParseError(m))
			}
			b = b[m:]
		}
	}
	return nil
}

// decodeTimestamp decodes a google.protobuf.Timestamp.
func decodeTimestamp(b []byte) (time.Time, error) {
	var sec, nsec int64
	err := wireFields(b, func(num protowire.Number, v uint64, _ []byte) error {
		switch num {
		case 1:
			sec = int64(v)
		case 2:
			nsec = int64(v)
		}
		return nil
	})
	if err != nil {
		return time.Time{}, err
	}
	if nsec < 0 || nsec >= 1e9 {
		return time.Time{}, fmt.Errorf("%w: timestamp nanos %d", errWire, nsec)
	}
	if sec == 0 && nsec == 0 {
		return time.Time{}, nil
	}
	return time.Unix(sec, nsec).UTC(), nil
}

// decodeMapEntry adds a map<string,string> entry to m.
func decodeMapEntry(b []byte, m map[string]string) error {
	var k, v string
	err := wireFields(b, func(num protowire.Number, _ uint64, data []byte) error {
		switch num {
		case 1:
			k = string(data)
		case 2:
			v = string(data)
		}
		return nil
	})
	if err == nil {
		m[k] = v
	}
	return err
}

func decodeEnvelope(b []byte) (ctrEnvelope, error) {
	var e ctrEnvelope
	err := wireFields(b, func(num protowire.Number, _ uint64, data []byte) error {
		var err error
		switch num {
		case 1:
			e.Timestamp, err = decodeTimestamp(data)
		case 2:
			e.Namespace = string(data)
		case 3:
			e.Topic = string(data)
		case 4:
			err = wireFields(data, func(num protowire.Number, _ uint64, data []byte) error {
				switch num {
				case 1:
					e.TypeURL = string(data)
				case 2:
					e.Event = data
				}
				return nil
			})
		}
		return err
	})
	return e, err
}

func decodeImageEvent(b []byte) (ctrImageEvent, error) {
	e := ctrImageEvent{Labels: map[string]string{}}
	err := wireFields(b, func(num protowire.Number, _ uint64, data []byte) error {
		switch num {
		case 1:
			e.Name = string(data)
		case 2:
			return decodeMapEntry(data, e.Labels)
		}
		return nil
	})
	return e, err
}

func decodeDescriptor(b []byte) (ctrDescriptor, error) {
	var d ctrDescriptor
	err := wireFields(b, func(num protowire.Number, v uint64, data []byte) error {
		switch num {
		case 1:
			d.MediaType = string(data)
		case 2:
			d.Digest = string(data)
		case 3:
			d.Size = int64(v)
		}
		return nil
	})
	return d, err
}

func decodeImage(b []byte) (ctrImage, error) {
	img := ctrImage{Labels: map[string]string{}}
	err := wireFields(b, func(num protowire.Number, _ uint64, data []byte) error {
		var err error
		switch num {
		case 1:
			img.Name = string(data)
		case 2:
			err = decodeMapEntry(data, img.Labels)
		case 3:
			img.Target, err = decodeDescriptor(data)
		case 7:
			img.CreatedAt, err = decodeTimestamp(data)
		case 8:
			img.UpdatedAt, err = decodeTimestamp(data)
		}
		return err
	})
	return img, err
}

// decodeImages decodes GetImageResponse (one image) and ListImagesResponse
// (repeated): both hold images in field 1.
func decodeImages(b []byte) ([]ctrImage, error) {
	var out []ctrImage
	err := wireFields(b, func(num protowire.Number, _ uint64, data []byte) error {
		if num != 1 {
			return nil
		}
		img, err := decodeImage(data)
		if err == nil {
			out = append(out, img)
		}
		return err
	})
	return out, err
}

// decodeInfoResponse decodes content's InfoResponse.
func decodeInfoResponse(b []byte) (ctrContentInfo, error) {
	info := ctrContentInfo{Labels: map[string]string{}}
	err := wireFields(b, func(num protowire.Number, _ uint64, data []byte) error {
		if num != 1 {
			return nil
		}
		return wireFields(data, func(num protowire.Number, v uint64, data []byte) error {
			switch num {
			case 1:
				info.Digest = string(data)
			case 2:
				info.Size = int64(v)
			case 5:
				return decodeMapEntry(data, info.Labels)
			}
			return nil
		})
	})
	return info, err
}

// decodeReadResponse decodes content's ReadContentResponse.
func decodeReadResponse(b []byte) (offset int64, data []byte, err error) {
	err = wireFields(b, func(num protowire.Number, v uint64, d []byte) error {
		switch num {
		case 1:
			offset = int64(v)
		case 2:
			data = d
		}
		return nil
	})
	return offset, data, err
}

// wireMsg is a request message, encoded.
type wireMsg []byte

func (m wireMsg) str(num protowire.Number, s string) wireMsg {
	m = protowire.AppendTag(m, num, protowire.BytesType)
	return protowire.AppendString(m, s)
}

func (m wireMsg) int(num protowire.Number, v int64) wireMsg {
	m = protowire.AppendTag(m, num, protowire.VarintType)
	return protowire.AppendVarint(m, uint64(v))
}

// rawMsg receives a response message undecoded.
type rawMsg struct{ b []byte }

// rawCodec passes messages through as bytes: requests are wireMsg,
// responses are decoded by the caller from a *rawMsg.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	m, ok := v.(wireMsg)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return m, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	m, ok := v.(*rawMsg)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	// gRPC may reuse the buffer after Unmarshal returns.
	m.b = append([]byte(nil), data...)
	return nil
}
