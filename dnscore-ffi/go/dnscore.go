// Package dnscore resolves through dnscore's cache, in-flight dedup and upstream failover
// inside the Go process, through the C ABI of dnscore-ffi (cgo).
//
// Build with pkg-config finding dnscore.pc (see dnscore-ffi/README.md):
//
//	PKG_CONFIG_PATH=/path/to/dir/with/dnscore.pc go build ./...
//
// Use [Resolver.NetResolver] to give dnscore's cache to any code that takes a
// *net.Resolver (a net.Dialer, http.Transport, gRPC).
package dnscore

/*
#cgo pkg-config: dnscore
#include <stdlib.h>
#include "dnscore.h"
*/
import "C"

import (
	"context"
	"errors"
	"math"
	"net"
	"sort"
	"sync"
	"time"
	"unsafe"
)

// Options configure a Resolver. Zero values mean dnscore's defaults.
type Options struct {
	// Upstreams are the servers asked, as "IP:PORT". At least one is required.
	Upstreams []string
	// CacheCapacity is how many answers the cache holds (default 10,000).
	CacheCapacity int
	// Timeout bounds a whole query across retries (default 2s).
	Timeout time.Duration
	// AttemptTimeout is how long one upstream is waited for before another is asked too.
	AttemptTimeout time.Duration
	// WorkerThreads is the number of the resolver's own threads (default 2).
	WorkerThreads int
	// Settings are any other settings of the resolver, by the names and with the values
	// of the sidecar's flags: {"max-ttl": "30s", "negative-max-ttl": "5s",
	// "selection": "round-robin"} (`dnscore-sidecar --help` lists them). They win over
	// the fields above. An unknown name or a bad value is an error from New.
	Settings map[string]string
	// ResolvConf is a resolv.conf to read ("/etc/resolv.conf"; empty: none). Its search
	// list and ndots then apply to LookupIP as in glibc ("redis" is asked as
	// redis.<namespace>.svc.cluster.local first in a pod), its timeout and attempts
	// options become settings, and its nameservers are the upstreams when Upstreams is
	// empty. NetResolver does not need it: Go's resolver applies the search list itself.
	ResolvConf string
	// HostsFile is a hosts file that LookupIP asks before DNS ("/etc/hosts"; empty: none),
	// re-read when it changes.
	HostsFile string
}

// Error is a failure reported by the C library: Code is one of the DNSCORE_E* codes.
type Error struct {
	Code int
	// Detail is extra text (from New), may be empty.
	Detail string
}

// The codes callers most often test for.
const (
	CodeNXDomain   = int(C.DNSCORE_ENXDOMAIN)
	CodeNoData     = int(C.DNSCORE_ENODATA)
	CodeTimeout    = int(C.DNSCORE_ETIMEOUT)
	CodeNoAnswer   = int(C.DNSCORE_ENOANSWER)
	CodeOverloaded = int(C.DNSCORE_EOVERLOADED)
	CodeMalformed  = int(C.DNSCORE_EMALFORMED)
	codeNoSpace    = int(C.DNSCORE_ENOSPC)
)

func (e *Error) Error() string {
	msg := "dnscore: " + C.GoString(C.dnscore_strerror(C.int(e.Code)))
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// Timeout reports whether the error is a timeout.
func (e *Error) Timeout() bool { return e.Code == CodeTimeout }

// Temporary reports whether retrying later may succeed.
func (e *Error) Temporary() bool {
	return e.Code == CodeTimeout || e.Code == CodeNoAnswer || e.Code == CodeOverloaded
}

// ErrClosed is returned by calls on a Resolver after Close.
var ErrClosed = errors.New("dnscore: resolver is closed")

// Resolver is a dnscore resolver with its own cache and threads. Safe for concurrent use.
type Resolver struct {
	// mu is held shared during every C call and exclusively by Close, because freeing the
	// C resolver while a call is inside it is undefined behaviour.
	mu  sync.RWMutex
	ptr *C.dnscore_resolver
}

// New builds a resolver. Call Close when done with it.
func New(opts Options) (*Resolver, error) {
	cfg := C.dnscore_config_default()
	if len(opts.Upstreams) > 0 {
		arr, free := cStrings(opts.Upstreams)
		defer free()
		cfg.upstreams = arr
		cfg.upstreams_len = C.size_t(len(opts.Upstreams))
	}
	if opts.CacheCapacity > 0 {
		cfg.cache_capacity = C.size_t(opts.CacheCapacity)
	}
	if opts.Timeout > 0 {
		cfg.timeout_ms = C.uint32_t(millis(opts.Timeout))
	}
	if opts.AttemptTimeout > 0 {
		cfg.attempt_timeout_ms = C.uint32_t(millis(opts.AttemptTimeout))
	}
	if opts.WorkerThreads > 0 {
		cfg.worker_threads = C.uint32_t(opts.WorkerThreads)
	}
	if len(opts.Settings) > 0 {
		names := make([]string, 0, len(opts.Settings))
		for name := range opts.Settings {
			names = append(names, name)
		}
		sort.Strings(names) // errors name settings[i]: the same i for the same options
		pairs := make([]string, len(names))
		for i, name := range names {
			pairs[i] = name + "=" + opts.Settings[name]
		}
		arr, free := cStrings(pairs)
		defer free()
		cfg.settings = arr
		cfg.settings_len = C.size_t(len(pairs))
	}
	if opts.ResolvConf != "" {
		path := C.CString(opts.ResolvConf)
		defer C.free(unsafe.Pointer(path))
		cfg.resolv_conf = path
	}
	if opts.HostsFile != "" {
		path := C.CString(opts.HostsFile)
		defer C.free(unsafe.Pointer(path))
		cfg.hosts_file = path
	}
	var cerr C.dnscore_error
	ptr := C.dnscore_resolver_new(&cfg, &cerr)
	if ptr == nil {
		return nil, &Error{Code: int(cerr.code), Detail: C.GoString(&cerr.message[0])}
	}
	return &Resolver{ptr: ptr}, nil
}

// cStrings copies list into C strings and an array of their pointers in C memory (a Go
// slice holding pointers may not be passed inside a struct to C); free releases them all.
func cStrings(list []string) (**C.char, func()) {
	ptrs := make([]*C.char, len(list))
	for i, s := range list {
		ptrs[i] = C.CString(s)
	}
	arr := (**C.char)(C.malloc(C.size_t(len(ptrs)) * C.size_t(unsafe.Sizeof(ptrs[0]))))
	copy(unsafe.Slice(arr, len(ptrs)), ptrs)
	return arr, func() {
		for _, p := range ptrs {
			C.free(unsafe.Pointer(p))
		}
		C.free(unsafe.Pointer(arr))
	}
}

// Close frees the resolver, after waiting for calls still inside it (at most the
// resolver's timeout). Calls after Close return ErrClosed. Closing twice is a no-op.
func (r *Resolver) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ptr != nil {
		C.dnscore_resolver_free(r.ptr)
		r.ptr = nil
	}
	return nil
}

func millis(d time.Duration) uint32 {
	ms := (d + time.Millisecond - 1) / time.Millisecond
	if ms > math.MaxUint32 {
		return math.MaxUint32
	}
	if ms < 1 {
		return 1
	}
	return uint32(ms)
}

// callTimeout is the C timeout for a call under ctx: 0 without a deadline.
func callTimeout(ctx context.Context) (C.uint32_t, error) {
	d, ok := ctx.Deadline()
	if !ok {
		return 0, nil
	}
	rem := time.Until(d)
	if rem <= 0 {
		return 0, context.DeadlineExceeded
	}
	return C.uint32_t(millis(rem)), nil
}

// result is one outcome of a call run by withContext.
type result[T any] struct {
	v   T
	err error
}

// withContext runs call (a blocking C call given its timeout in ms) so that ctx is
// honoured: the deadline becomes the call's timeout, and a cancellation returns at once
// while the call finishes in the background (it owns all its memory).
func withContext[T any](ctx context.Context, r *Resolver, call func(*C.dnscore_resolver, C.uint32_t) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	ms, err := callTimeout(ctx)
	if err != nil {
		return zero, err
	}
	run := func() (T, error) {
		r.mu.RLock()
		defer r.mu.RUnlock()
		if r.ptr == nil {
			return zero, ErrClosed
		}
		return call(r.ptr, ms)
	}
	if ctx.Done() == nil {
		return run()
	}
	done := make(chan result[T], 1)
	go func() {
		v, err := run()
		done <- result[T]{v, err}
	}()
	select {
	case res := <-done:
		if e, ok := res.err.(*Error); ok && e.Code == CodeTimeout && ctx.Err() != nil {
			return zero, ctx.Err()
		}
		return res.v, res.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// LookupIP returns the IPv4 and IPv6 addresses of host: through the hosts file and the
// search list when Options name them, else as host is. Errors are *net.DNSError, with
// IsNotFound for NXDOMAIN and NODATA.
func (r *Resolver) LookupIP(ctx context.Context, host string) ([]net.IP, error) {
	ips, err := withContext(ctx, r, func(p *C.dnscore_resolver, ms C.uint32_t) ([]net.IP, error) {
		return lookupIP(p, host, ms)
	})
	if err == nil {
		return ips, nil
	}
	dnsErr := &net.DNSError{Err: err.Error(), Name: host}
	var e *Error
	switch {
	case errors.As(err, &e):
		dnsErr.IsNotFound = e.Code == CodeNXDomain || e.Code == CodeNoData
		dnsErr.IsTimeout = e.Timeout()
		dnsErr.IsTemporary = e.Temporary()
	case errors.Is(err, context.DeadlineExceeded):
		dnsErr.IsTimeout = true
	}
	return nil, dnsErr
}

func lookupIP(p *C.dnscore_resolver, host string, ms C.uint32_t) ([]net.IP, error) {
	chost := append([]byte(host), 0)
	out := make([]C.dnscore_addr, 8)
	for {
		var n C.size_t
		rc := int(C.dnscore_lookup_ip(p, (*C.char)(unsafe.Pointer(&chost[0])), C.DNSCORE_AF_UNSPEC,
			&out[0], C.size_t(len(out)), &n, ms))
		if rc == codeNoSpace && int(n) > len(out) {
			out = make([]C.dnscore_addr, int(n))
			continue
		}
		if rc != 0 {
			return nil, &Error{Code: rc}
		}
		ips := make([]net.IP, 0, int(n))
		for _, a := range out[:n] {
			size := net.IPv6len
			if a.family == C.DNSCORE_AF_INET {
				size = net.IPv4len
			}
			ip := make(net.IP, size)
			for i := range ip {
				ip[i] = byte(a.addr[i])
			}
			ips = append(ips, ip)
		}
		return ips, nil
	}
}

// Resolve answers a DNS query in wire format (no TCP length prefix) with the response in
// wire format, up to 65,535 bytes. When no upstream answers the response is SERVFAIL;
// a query that cannot be answered at all is an *Error with CodeMalformed.
func (r *Resolver) Resolve(ctx context.Context, query []byte) ([]byte, error) {
	return r.resolve(ctx, query, false)
}

// bufPool holds response buffers large enough for most answers; a response is copied out
// at its exact size.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 4096)
	return &b
}}

func (r *Resolver) resolve(ctx context.Context, query []byte, datagram bool) ([]byte, error) {
	if len(query) == 0 {
		return nil, &Error{Code: int(C.DNSCORE_EINVAL)}
	}
	q := append([]byte(nil), query...) // the call may outlive a cancelled caller
	return withContext(ctx, r, func(p *C.dnscore_resolver, ms C.uint32_t) ([]byte, error) {
		buf := bufPool.Get().(*[]byte)
		defer bufPool.Put(buf)
		out := *buf
		for {
			var n C.size_t
			qp := (*C.uint8_t)(unsafe.Pointer(&q[0]))
			op := (*C.uint8_t)(unsafe.Pointer(&out[0]))
			var rc int
			if datagram {
				rc = int(C.dnscore_resolve_datagram(p, qp, C.size_t(len(q)), op, C.size_t(len(out)), &n, ms))
			} else {
				rc = int(C.dnscore_resolve(p, qp, C.size_t(len(q)), op, C.size_t(len(out)), &n, ms))
			}
			if rc == codeNoSpace && int(n) > len(out) {
				out = make([]byte, int(n)) // rare (large answers): not pooled
				continue
			}
			if rc != 0 {
				return nil, &Error{Code: rc}
			}
			return append([]byte(nil), out[:n]...), nil
		}
	})
}
