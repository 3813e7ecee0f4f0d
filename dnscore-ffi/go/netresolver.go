package dnscore

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// NetResolver returns a standard *net.Resolver whose queries never leave the process: its
// Dial returns an in-memory connection answered by r (cache, dedup, upstream failover).
// Hand it to a net.Dialer (and so http.Transport) or anything else that takes a
// *net.Resolver. Go's own resolver logic still applies: /etc/hosts, and the search list
// and ndots of /etc/resolv.conf (use fully qualified names, "svc.ns.svc.cluster.local.",
// to skip the search list). The context's deadline and cancellation are honoured.
func (r *Resolver) NetResolver() *net.Resolver {
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			c := &memConn{r: r, ctx: ctx}
			switch network {
			case "udp", "udp4", "udp6":
				return &packetConn{c}, nil
			default:
				c.stream = true
				return c, nil
			}
		},
	}
}

// memAddr is the address of both ends of a memConn.
type memAddr struct{ network string }

func (a memAddr) Network() string { return a.network }
func (a memAddr) String() string  { return "dnscore" }

// memConn is a DNS "connection" answered in memory: each query written is resolved at
// once, and its response is queued for Read. As a stream (TCP) messages carry a two-byte
// length prefix, as a packetConn (UDP) they are datagrams and large answers are truncated
// (TC=1) so Go's resolver retries over the stream.
type memConn struct {
	r      *Resolver
	ctx    context.Context // the Dial context: the lookup's deadline and cancellation
	stream bool

	mu       sync.Mutex
	deadline time.Time
	replies  [][]byte // datagrams not yet read
	rbuf     []byte   // stream bytes not yet read
	wbuf     []byte   // stream bytes of an incomplete query
	readErr  error    // what Read returns once replies are exhausted
	closed   bool
}

type packetConn struct{ *memConn }

func (c *packetConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, err := c.Read(b)
	return n, memAddr{"udp"}, err
}

func (c *packetConn) WriteTo(b []byte, _ net.Addr) (int, error) { return c.Write(b) }
func (c *packetConn) LocalAddr() net.Addr                       { return memAddr{"udp"} }
func (c *packetConn) RemoteAddr() net.Addr                      { return memAddr{"udp"} }

func (c *memConn) queryContext() (context.Context, context.CancelFunc) {
	c.mu.Lock()
	d := c.deadline
	c.mu.Unlock()
	if d.IsZero() {
		return c.ctx, func() {}
	}
	return context.WithDeadline(c.ctx, d)
}

// answer resolves one query and queues its response, or records why there is none.
func (c *memConn) answer(query []byte) {
	ctx, cancel := c.queryContext()
	defer cancel()
	resp, err := c.r.resolve(ctx, query, !c.stream)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		var e *Error
		switch {
		case errors.As(err, &e) && e.Code == CodeMalformed:
			// Dropped, as a server would: the reader times out.
			c.readErr = os.ErrDeadlineExceeded
		case errors.Is(err, context.Canceled):
			c.readErr = err
		default:
			// Timeouts and the rest look like a server that did not answer.
			c.readErr = os.ErrDeadlineExceeded
		}
		return
	}
	if c.stream {
		var l [2]byte
		binary.BigEndian.PutUint16(l[:], uint16(len(resp)))
		c.rbuf = append(append(c.rbuf, l[:]...), resp...)
	} else {
		c.replies = append(c.replies, resp)
	}
}

func (c *memConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	if !c.stream {
		c.mu.Unlock()
		c.answer(append([]byte(nil), b...))
		return len(b), nil
	}
	c.wbuf = append(c.wbuf, b...)
	var queries [][]byte
	for len(c.wbuf) >= 2 {
		n := int(binary.BigEndian.Uint16(c.wbuf))
		if len(c.wbuf) < 2+n {
			break
		}
		queries = append(queries, append([]byte(nil), c.wbuf[2:2+n]...))
		c.wbuf = c.wbuf[2+n:]
	}
	c.mu.Unlock()
	for _, q := range queries {
		c.answer(q)
	}
	return len(b), nil
}

func (c *memConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if c.stream {
		if len(c.rbuf) > 0 {
			n := copy(b, c.rbuf)
			c.rbuf = c.rbuf[n:]
			return n, nil
		}
	} else if len(c.replies) > 0 {
		n := copy(b, c.replies[0])
		c.replies = c.replies[1:]
		return n, nil
	}
	if c.readErr != nil {
		return 0, c.readErr
	}
	if c.stream {
		return 0, io.EOF
	}
	return 0, os.ErrDeadlineExceeded
}

func (c *memConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return memAddr{"tcp"} }
func (c *memConn) RemoteAddr() net.Addr { return memAddr{"tcp"} }

func (c *memConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

func (c *memConn) SetReadDeadline(t time.Time) error  { return c.SetDeadline(t) }
func (c *memConn) SetWriteDeadline(t time.Time) error { return c.SetDeadline(t) }
