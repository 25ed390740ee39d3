package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	ctrevents "github.com/containerd/containerd/api/events"
	contentapi "github.com/containerd/containerd/api/services/content/v1"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	imagesapi "github.com/containerd/containerd/api/services/images/v1"
	ctrtypes "github.com/containerd/containerd/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Containerd is a client of containerd's gRPC API over its socket, for
// the calls the containerd watcher makes: the events service's
// Subscribe, the images service's Get and List, and the content store's
// Info and Read, with the generated clients and types of
// github.com/containerd/containerd/api.
type Containerd struct {
	// Address is the unix socket, as given to NewContainerd.
	Address string
	// Path is the socket's file.
	Path string
	conn *grpc.ClientConn
}

// DefaultContainerdAddress is containerd's socket on most nodes.
const DefaultContainerdAddress = "unix:///run/containerd/containerd.sock"

// callTimeout bounds each unary call and each content read.
const callTimeout = 30 * time.Second

// NewContainerd makes a client of the containerd at address,
// unix:///path (or a bare absolute path). It does not connect yet: gRPC
// connects on the first call and again after containerd restarts.
func NewContainerd(address string) (*Containerd, error) {
	path := address
	if strings.Contains(address, "://") {
		u, err := url.Parse(address)
		if err != nil || u.Scheme != "unix" || u.Host != "" || u.Path == "" {
			return nil, fmt.Errorf("containerd address %q: want unix:///path/to/containerd.sock", address)
		}
		path = u.Path
	}
	if !strings.HasPrefix(path, "/") {
		return nil, fmt.Errorf("containerd address %q: want unix:///path/to/containerd.sock", address)
	}
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// gRPC's own reconnect backoff grows to 2 minutes by default: kept
		// below the watcher's, so that it finds containerd back promptly.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		// containerd's Read sends chunks of 1 MiB; events and image
		// records are small.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)),
	)
	if err != nil {
		return nil, fmt.Errorf("containerd address %q: %w", address, err)
	}
	return &Containerd{Address: address, Path: path, conn: conn}, nil
}

// Close closes the connection.
func (c *Containerd) Close() error { return c.conn.Close() }

// nsCtx is ctx with containerd's namespace header.
func nsCtx(ctx context.Context, ns string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "containerd-namespace", ns)
}

// ContainerdError is an error status containerd answered with.
type ContainerdError struct {
	Method string
	Code   codes.Code
	Msg    string
}

func (e *ContainerdError) Error() string {
	return fmt.Sprintf("containerd %s: %s: %s", e.Method, e.Code, e.Msg)
}

// NotFound reports whether the object asked for does not exist.
func (e *ContainerdError) NotFound() bool { return e.Code == codes.NotFound }

func ctrErr(method string, err error) error {
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return &ContainerdError{Method: method, Code: s.Code(), Msg: s.Message()}
	}
	return fmt.Errorf("containerd %s: %w", method, err)
}

// Subscribe follows containerd's events that match any of filters (the
// events filter syntax: topic=="/images/create"), of all namespaces,
// calling fn with each until ctx ends, the stream breaks or fn fails.
// fn is called first with a nil envelope once the request is sent (the
// server subscribes a moment later).
func (c *Containerd) Subscribe(ctx context.Context, filters []string, fn func(*ctrEnvelope) error) error {
	const method = "/containerd.services.events.v1.Events/Subscribe"
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The generated client sends the request and closes the send side
	// before it returns.
	st, err := eventsapi.NewEventsClient(c.conn).Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: filters})
	if err != nil {
		return ctrErr(method, err)
	}
	// containerd sends no headers before the first event: the request
	// is on its way, and the server subscribes as it takes it.
	if err := fn(nil); err != nil {
		return err
	}
	for {
		m, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("containerd %s: the stream ended", method)
			}
			return ctrErr(method, err)
		}
		ts, err := timeFromProto(m.GetTimestamp())
		if err != nil {
			return fmt.Errorf("containerd %s: envelope: %w", method, err)
		}
		env := ctrEnvelope{Timestamp: ts, Namespace: m.GetNamespace(), Topic: m.GetTopic(), Event: m.GetEvent()}
		if err := fn(&env); err != nil {
			return err
		}
	}
}

// Image is the image record name in namespace ns.
func (c *Containerd) Image(ctx context.Context, ns, name string) (ctrImage, error) {
	const method = "/containerd.services.images.v1.Images/Get"
	ctx, cancel := context.WithTimeout(nsCtx(ctx, ns), callTimeout)
	defer cancel()
	resp, err := imagesapi.NewImagesClient(c.conn).Get(ctx, &imagesapi.GetImageRequest{Name: name})
	if err != nil {
		return ctrImage{}, ctrErr(method, err)
	}
	if resp.GetImage() == nil {
		return ctrImage{}, fmt.Errorf("containerd %s: no image in the answer", method)
	}
	img, err := imageFromProto(resp.GetImage())
	if err != nil {
		return ctrImage{}, fmt.Errorf("containerd %s: %w", method, err)
	}
	return img, nil
}

// Images lists the image records of namespace ns.
func (c *Containerd) Images(ctx context.Context, ns string) ([]ctrImage, error) {
	const method = "/containerd.services.images.v1.Images/List"
	ctx, cancel := context.WithTimeout(nsCtx(ctx, ns), callTimeout)
	defer cancel()
	resp, err := imagesapi.NewImagesClient(c.conn).List(ctx, &imagesapi.ListImagesRequest{})
	if err != nil {
		return nil, ctrErr(method, err)
	}
	out := make([]ctrImage, 0, len(resp.GetImages()))
	for _, m := range resp.GetImages() {
		img, err := imageFromProto(m)
		if err != nil {
			return nil, fmt.Errorf("containerd %s: %w", method, err)
		}
		out = append(out, img)
	}
	return out, nil
}

// Info is the content store's info on blob dgst.
func (c *Containerd) Info(ctx context.Context, ns, dgst string) (ctrContentInfo, error) {
	const method = "/containerd.services.content.v1.Content/Info"
	ctx, cancel := context.WithTimeout(nsCtx(ctx, ns), callTimeout)
	defer cancel()
	resp, err := contentapi.NewContentClient(c.conn).Info(ctx, &contentapi.InfoRequest{Digest: dgst})
	if err != nil {
		return ctrContentInfo{}, ctrErr(method, err)
	}
	info := resp.GetInfo()
	out := ctrContentInfo{Digest: info.GetDigest(), Size: info.GetSize(), Labels: info.GetLabels()}
	if out.Labels == nil {
		out.Labels = map[string]string{}
	}
	return out, nil
}

// ErrTooLarge is returned for a blob larger than the bound asked for.
var ErrTooLarge = errors.New("blob too large")

// Read reads blob dgst from the content store, at most max bytes: a
// larger one fails with ErrTooLarge.
func (c *Containerd) Read(ctx context.Context, ns, dgst string, max int64) ([]byte, error) {
	const method = "/containerd.services.content.v1.Content/Read"
	ctx, cancel := context.WithTimeout(nsCtx(ctx, ns), callTimeout)
	defer cancel()
	// One byte more than max: a blob of exactly max is read whole.
	st, err := contentapi.NewContentClient(c.conn).Read(ctx, &contentapi.ReadContentRequest{Digest: dgst, Size: max + 1})
	if err != nil {
		return nil, ctrErr(method, err)
	}
	var out []byte
	for {
		m, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, ctrErr(method, err)
		}
		if m.GetOffset() != int64(len(out)) {
			return nil, fmt.Errorf("containerd %s %s: chunk at offset %d, want %d", method, dgst, m.GetOffset(), len(out))
		}
		if int64(len(out)+len(m.GetData())) > max {
			return nil, fmt.Errorf("containerd %s %s: %w (more than %d bytes)", method, dgst, ErrTooLarge, max)
		}
		out = append(out, m.GetData()...)
	}
}

// ctrEnvelope is an event from containerd's events service.
type ctrEnvelope struct {
	Timestamp time.Time
	Namespace string
	Topic     string
	// Event is the event, its type URL the event type's protobuf name
	// (containerd.services.images.v1.ImageCreate).
	Event *anypb.Any
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

// errMalformed is returned for a message containerd sent that does not
// hold what it should.
var errMalformed = errors.New("malformed containerd message")

// timeFromProto is t as a time.Time: zero when t is unset or zero, as
// containerd leaves times it does not know.
func timeFromProto(t *timestamppb.Timestamp) (time.Time, error) {
	if t == nil || (t.GetSeconds() == 0 && t.GetNanos() == 0) {
		return time.Time{}, nil
	}
	if err := t.CheckValid(); err != nil {
		return time.Time{}, fmt.Errorf("%w: %v", errMalformed, err)
	}
	return t.AsTime().UTC(), nil
}

// descriptorFromProto is d's fields the watcher reads.
func descriptorFromProto(d *ctrtypes.Descriptor) ctrDescriptor {
	return ctrDescriptor{MediaType: d.GetMediaType(), Digest: d.GetDigest(), Size: d.GetSize()}
}

// imageFromProto is image record m.
func imageFromProto(m *imagesapi.Image) (ctrImage, error) {
	img := ctrImage{Name: m.GetName(), Labels: m.GetLabels(), Target: descriptorFromProto(m.GetTarget())}
	if img.Labels == nil {
		img.Labels = map[string]string{}
	}
	var err error
	if img.CreatedAt, err = timeFromProto(m.GetCreatedAt()); err != nil {
		return ctrImage{}, fmt.Errorf("image %q created_at: %w", clip(img.Name, 200), err)
	}
	if img.UpdatedAt, err = timeFromProto(m.GetUpdatedAt()); err != nil {
		return ctrImage{}, fmt.Errorf("image %q updated_at: %w", clip(img.Name, 200), err)
	}
	return img, nil
}

// imageEventName is the image name of an ImageCreate or ImageUpdate
// event; an error for any other event, or one that does not decode.
// containerd sends the protobuf name as the type URL
// (containerd.services.images.v1.ImageCreate, seen from containerd 1.6);
// the name of the Go package, containerd.events.ImageCreate, is taken
// too, with or without a type URL prefix.
func imageEventName(a *anypb.Any) (string, error) {
	if a == nil {
		return "", fmt.Errorf("%w: an envelope without an event", errMalformed)
	}
	typ := a.GetTypeUrl()
	if i := strings.LastIndexByte(typ, '/'); i >= 0 {
		typ = typ[i+1:]
	}
	var m interface {
		proto.Message
		GetName() string
	}
	switch protoreflect.FullName(typ) {
	case "containerd.events.ImageCreate", (*ctrevents.ImageCreate)(nil).ProtoReflect().Descriptor().FullName():
		m = &ctrevents.ImageCreate{}
	case "containerd.events.ImageUpdate", (*ctrevents.ImageUpdate)(nil).ProtoReflect().Descriptor().FullName():
		m = &ctrevents.ImageUpdate{}
	default:
		return "", fmt.Errorf("%w: event type %q is not an image's create or update", errMalformed, clip(a.GetTypeUrl(), 200))
	}
	if err := proto.Unmarshal(a.GetValue(), m); err != nil {
		return "", fmt.Errorf("%w: %s: %v", errMalformed, typ, err)
	}
	if m.GetName() == "" {
		return "", fmt.Errorf("%w: %s without an image name", errMalformed, typ)
	}
	return m.GetName(), nil
}
