package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Containerd is a client of containerd's gRPC API over its socket, for
// the calls the containerd watcher makes: the events service's
// Subscribe, the images service's Get and List, and the content store's
// Info and Read.
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
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20), grpc.ForceCodec(rawCodec{})),
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

func (c *Containerd) unary(ctx context.Context, ns, method string, req wireMsg) ([]byte, error) {
	ctx, cancel := context.WithTimeout(nsCtx(ctx, ns), callTimeout)
	defer cancel()
	var resp rawMsg
	if err := c.conn.Invoke(ctx, method, req, &resp); err != nil {
		return nil, ctrErr(method, err)
	}
	return resp.b, nil
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
	st, err := c.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
	if err != nil {
		return ctrErr(method, err)
	}
	var req wireMsg
	for _, f := range filters {
		req = req.str(1, f)
	}
	if err := st.SendMsg(req); err != nil {
		return ctrErr(method, err)
	}
	if err := st.CloseSend(); err != nil {
		return ctrErr(method, err)
	}
	// containerd sends no headers before the first event: the request
	// is on its way, and the server subscribes as it takes it.
	if err := fn(nil); err != nil {
		return err
	}
	for {
		var m rawMsg
		if err := st.RecvMsg(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("containerd %s: the stream ended", method)
			}
			return ctrErr(method, err)
		}
		env, err := decodeEnvelope(m.b)
		if err != nil {
			return fmt.Errorf("containerd %s: %w", method, err)
		}
		if err := fn(&env); err != nil {
			return err
		}
	}
}

// Image is the image record name in namespace ns.
func (c *Containerd) Image(ctx context.Context, ns, name string) (ctrImage, error) {
	const method = "/containerd.services.images.v1.Images/Get"
	b, err := c.unary(ctx, ns, method, wireMsg(nil).str(1, name))
	if err != nil {
		return ctrImage{}, err
	}
	imgs, err := decodeImages(b)
	if err != nil {
		return ctrImage{}, fmt.Errorf("containerd %s: %w", method, err)
	}
	if len(imgs) != 1 {
		return ctrImage{}, fmt.Errorf("containerd %s: %d images in the answer", method, len(imgs))
	}
	return imgs[0], nil
}

// Images lists the image records of namespace ns.
func (c *Containerd) Images(ctx context.Context, ns string) ([]ctrImage, error) {
	const method = "/containerd.services.images.v1.Images/List"
	b, err := c.unary(ctx, ns, method, nil)
	if err != nil {
		return nil, err
	}
	imgs, err := decodeImages(b)
	if err != nil {
		return nil, fmt.Errorf("containerd %s: %w", method, err)
	}
	return imgs, nil
}

// Info is the content store's info on blob dgst.
func (c *Containerd) Info(ctx context.Context, ns, dgst string) (ctrContentInfo, error) {
	const method = "/containerd.services.content.v1.Content/Info"
	b, err := c.unary(ctx, ns, method, wireMsg(nil).str(1, dgst))
	if err != nil {
		return ctrContentInfo{}, err
	}
	info, err := decodeInfoResponse(b)
	if err != nil {
		return ctrContentInfo{}, fmt.Errorf("containerd %s: %w", method, err)
	}
	return info, nil
}

// ErrTooLarge is returned for a blob larger than the bound asked for.
var ErrTooLarge = errors.New("blob too large")

// Read reads blob dgst from the content store, at most max bytes: a
// larger one fails with ErrTooLarge.
func (c *Containerd) Read(ctx context.Context, ns, dgst string, max int64) ([]byte, error) {
	const method = "/containerd.services.content.v1.Content/Read"
	ctx, cancel := context.WithTimeout(nsCtx(ctx, ns), callTimeout)
	defer cancel()
	st, err := c.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
	if err != nil {
		return nil, ctrErr(method, err)
	}
	// One byte more than max: a blob of exactly max is read whole.
	if err := st.SendMsg(wireMsg(nil).str(1, dgst).int(3, max+1)); err != nil {
		return nil, ctrErr(method, err)
	}
	if err := st.CloseSend(); err != nil {
		return nil, ctrErr(method, err)
	}
	var out []byte
	for {
		var m rawMsg
		if err := st.RecvMsg(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, ctrErr(method, err)
		}
		off, data, err := decodeReadResponse(m.b)
		if err != nil {
			return nil, fmt.Errorf("containerd %s: %w", method, err)
		}
		if off != int64(len(out)) {
			return nil, fmt.Errorf("containerd %s %s: chunk at offset %d, want %d", method, dgst, off, len(out))
		}
		if int64(len(out)+len(data)) > max {
			return nil, fmt.Errorf("containerd %s %s: %w (more than %d bytes)", method, dgst, ErrTooLarge, max)
		}
		out = append(out, data...)
	}
}
