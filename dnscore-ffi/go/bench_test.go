package dnscore

import (
	"context"
	"net"
	"os"
	"testing"
	"time"
)

// Cached lookups through the Go package. BenchmarkSystem* use Go's standard resolvers,
// which read /etc/resolv.conf: they run only with DNSCORE_BENCH_SYSTEM=1, which
// dnscore-ffi/bench/run.sh sets inside a namespace where resolv.conf points at a dnscore
// sidecar on 127.0.0.1:53 (so no query ever leaves the machine).

func BenchmarkLookupIP(b *testing.B) {
	r := newResolver(b, upstream, 0)
	ctx := context.Background()
	if _, err := r.LookupIP(ctx, "a.test"); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.LookupIP(ctx, "a.test"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookupIPWithDeadline(b *testing.B) {
	r := newResolver(b, upstream, 0)
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	if _, err := r.LookupIP(ctx, "a.test"); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.LookupIP(ctx, "a.test"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNetResolverLookupHost(b *testing.B) {
	nr := newResolver(b, upstream, 0).NetResolver()
	benchLookupHost(b, nr)
}

// BenchmarkSystemResolver is net.DefaultResolver: Go's own stub resolver, or glibc's
// getaddrinfo with GODEBUG=netdns=cgo.
func BenchmarkSystemResolver(b *testing.B) {
	systemOnly(b)
	benchLookupHost(b, net.DefaultResolver)
}

func systemOnly(b *testing.B) {
	if os.Getenv("DNSCORE_BENCH_SYSTEM") != "1" {
		b.Skip("set DNSCORE_BENCH_SYSTEM=1 only where resolv.conf points at a local sidecar")
	}
}

func benchLookupHost(b *testing.B, nr *net.Resolver) {
	ctx := context.Background()
	if _, err := nr.LookupHost(ctx, "a.test."); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := nr.LookupHost(ctx, "a.test."); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResolve(b *testing.B) {
	r := newResolver(b, upstream, 0)
	ctx := context.Background()
	q := query(1, "a.test.", 1)
	if _, err := r.Resolve(ctx, q); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := r.Resolve(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
}
