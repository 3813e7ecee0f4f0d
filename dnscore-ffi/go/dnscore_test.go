package dnscore

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// upstream is the address of dnscore-testkit's test-upstream (zone "test.": a.test A
// 192.0.2.1 + AAAA 2001:db8::1, b.test A 192.0.2.2, nope.test NXDOMAIN, big.test TXT of
// over 2000 bytes), started by TestMain on 127.0.0.1.
var upstream string

// TestMain starts the test upstream: $DNSCORE_TEST_UPSTREAM_BIN, or else through cargo.
// It stops when its stdin (our pipe) closes.
func TestMain(m *testing.M) {
	var cmd *exec.Cmd
	if bin := os.Getenv("DNSCORE_TEST_UPSTREAM_BIN"); bin != "" {
		cmd = exec.Command(bin)
	} else {
		cmd = exec.Command("cargo", "run", "-q", "-p", "dnscore-testkit", "--bin", "test-upstream")
		cmd.Dir = filepath.Join("..", "..")
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		panic(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		panic(err)
	}
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		panic("test-upstream printed no address: " + err.Error())
	}
	upstream = strings.TrimSpace(line)
	code := m.Run()
	stdin.Close()
	_ = cmd.Wait()
	os.Exit(code)
}

func newResolver(t testing.TB, addr string, timeout time.Duration) *Resolver {
	t.Helper()
	r, err := New(Options{Upstreams: []string{addr}, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// blackHole is an upstream that never answers.
func blackHole(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	return pc.LocalAddr().String()
}

// query builds a wire query without EDNS.
func query(id uint16, name string, qtype uint16) []byte {
	b := []byte{byte(id >> 8), byte(id), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(label)))
		b = append(b, label...)
	}
	b = append(b, 0, byte(qtype>>8), byte(qtype), 0, 1)
	return b
}

func strs(ips []net.IP) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}

func TestLookupIP(t *testing.T) {
	r := newResolver(t, upstream, 0)
	ips, err := r.LookupIP(context.Background(), "a.test")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strs(ips), " "); got != "192.0.2.1 2001:db8::1" {
		t.Fatalf("a.test: %s", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	ips, err = r.LookupIP(ctx, "b.test.")
	if err != nil || len(ips) != 1 || !ips[0].Equal(net.IPv4(192, 0, 2, 2)) {
		t.Fatalf("b.test: %v %v", ips, err)
	}
}

func TestLookupIPNotFound(t *testing.T) {
	r := newResolver(t, upstream, 0)
	_, err := r.LookupIP(context.Background(), "nope.test")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound || dnsErr.Name != "nope.test" {
		t.Fatalf("nope.test: %#v", err)
	}
	_, err = r.LookupIP(context.Background(), "a..test")
	if err == nil {
		t.Fatal("a..test resolved")
	}
}

func TestLookupIPThroughTheSearchListAndHostsFile(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "resolv.conf")
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(conf, []byte("search sub.test test\nnameserver 10.255.255.1\noptions ndots:2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hosts, []byte("10.9.9.9 db.internal\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{Upstreams: []string{upstream}, ResolvConf: conf, HostsFile: hosts})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// "a": a.sub.test (NXDOMAIN), then a.test.
	ips, err := r.LookupIP(context.Background(), "a")
	if err != nil || strings.Join(strs(ips), " ") != "192.0.2.1 2001:db8::1" {
		t.Fatalf("a: %v %v", ips, err)
	}
	ips, err = r.LookupIP(context.Background(), "db.internal")
	if err != nil || len(ips) != 1 || !ips[0].Equal(net.IPv4(10, 9, 9, 9)) {
		t.Fatalf("db.internal: %v %v", ips, err)
	}
	// Without the files, "a" is asked as it is: the test upstream refuses names outside test.
	plain := newResolver(t, upstream, 0)
	if _, err := plain.LookupIP(context.Background(), "a"); err == nil {
		t.Fatal("a resolved without a search list")
	}
	if _, err := New(Options{ResolvConf: filepath.Join(dir, "absent")}); err == nil || !strings.Contains(err.Error(), "absent") {
		t.Fatalf("absent resolv.conf: %v", err)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Fatal("no upstream accepted")
	}
	_, err := New(Options{Upstreams: []string{"localhost:53"}})
	var e *Error
	if !errors.As(err, &e) || !strings.Contains(e.Error(), "localhost:53") {
		t.Fatalf("bad upstream: %v", err)
	}
}

func TestResolve(t *testing.T) {
	r := newResolver(t, upstream, 0)
	resp, err := r.Resolve(context.Background(), query(0xabcd, "a.test.", 1))
	if err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint16(resp) != 0xabcd || resp[2]&0x80 == 0 || binary.BigEndian.Uint16(resp[6:]) != 1 {
		t.Fatalf("response header % x", resp[:12])
	}
	// Larger than the first buffer: grown and asked again (from the cache).
	big, err := r.Resolve(context.Background(), query(2, "big.test.", 16))
	if err != nil || len(big) < 2000 || big[2]&0x02 != 0 {
		t.Fatalf("big.test: %d bytes, %v", len(big), err)
	}
	var e *Error
	if _, err := r.Resolve(context.Background(), []byte{1, 2, 3}); !errors.As(err, &e) || e.Code != CodeMalformed {
		t.Fatalf("junk: %v", err)
	}
}

// firstTTL is the TTL of the first record after the question of resp, an answer to q
// (which it echoes): the answer's, or for a negative answer the SOA's in the authority.
func firstTTL(t *testing.T, q, resp []byte) uint32 {
	t.Helper()
	at := len(q)
	for at < len(resp) && resp[at] != 0 && resp[at]&0xc0 != 0xc0 {
		at += int(resp[at]) + 1
	}
	if at < len(resp) && resp[at]&0xc0 == 0xc0 {
		at += 2
	} else {
		at++
	}
	if at+8 > len(resp) {
		t.Fatalf("no record after the question: % x", resp)
	}
	return binary.BigEndian.Uint32(resp[at+4:])
}

func TestSettingsByName(t *testing.T) {
	r, err := New(Options{
		Upstreams: []string{upstream},
		Settings:  map[string]string{"max-ttl": "30s", "negative-max-ttl": "5s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	q := query(1, "a.test.", 1)
	resp, err := r.Resolve(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if ttl := firstTTL(t, q, resp); ttl > 30 {
		t.Fatalf("a.test: TTL %d over max-ttl 30 (the zone says 300)", ttl)
	}
	q = query(2, "nope.test.", 1)
	resp, err = r.Resolve(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if resp[3]&0x0f != 3 || binary.BigEndian.Uint16(resp[8:]) == 0 {
		t.Fatalf("nope.test: not NXDOMAIN with an authority: % x", resp[:12])
	}
	if ttl := firstTTL(t, q, resp); ttl > 5 {
		t.Fatalf("nope.test: negative TTL %d over negative-max-ttl 5 (the SOA says 60)", ttl)
	}
	for _, bad := range []map[string]string{{"max-tll": "30"}, {"timeout": "soon"}} {
		_, err := New(Options{Upstreams: []string{upstream}, Settings: bad})
		var e *Error
		if !errors.As(err, &e) || !strings.Contains(e.Error(), "settings[0]") {
			t.Fatalf("%v: %v", bad, err)
		}
	}
}

func TestNetResolver(t *testing.T) {
	r := newResolver(t, upstream, 0)
	nr := r.NetResolver()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := nr.LookupHost(ctx, "a.test.")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(addrs)
	if strings.Join(addrs, " ") != "192.0.2.1 2001:db8::1" {
		t.Fatalf("LookupHost: %v", addrs)
	}
	ips, err := nr.LookupIP(ctx, "ip4", "b.test.")
	if err != nil || len(ips) != 1 || ips[0].String() != "192.0.2.2" {
		t.Fatalf("LookupIP ip4: %v %v", ips, err)
	}
	_, err = nr.LookupHost(ctx, "nope.test.")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("nope.test: %v", err)
	}
	// Over 2000 bytes: truncated on the datagram conn, so Go retries on the stream conn.
	txts, err := nr.LookupTXT(ctx, "big.test.")
	total := 0
	for _, s := range txts {
		total += len(s)
	}
	if err != nil || total < 1500 {
		t.Fatalf("LookupTXT big.test: %d bytes, %v", total, err)
	}
}

func TestNetResolverInDialer(t *testing.T) {
	r := newResolver(t, upstream, 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Close()
		}
	}()
	// The zone's names map to TEST-NET addresses that must not be dialed, so: a literal
	// dials as usual, and a missing name fails with dnscore's NXDOMAIN.
	d := &net.Dialer{Resolver: r.NetResolver(), Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = d.DialContext(ctx, "tcp", "nope.test.:80")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsNotFound {
		t.Fatalf("dialing nope.test: %v", err)
	}
}

func TestContextHonoured(t *testing.T) {
	r := newResolver(t, blackHole(t), 2*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.LookupIP(ctx, "slow.test"); err == nil {
		t.Fatal("cancelled context: no error")
	}

	start := time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	_, err := r.LookupIP(ctx, "slow.test")
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) || !dnsErr.IsTimeout {
		t.Fatalf("deadline: %#v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("deadline of 150ms took %v", el)
	}

	ctx, cancel = context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	start = time.Now()
	if _, err := r.Resolve(ctx, query(1, "slow.test.", 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancel: %v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("cancel after 100ms took %v", el)
	}

	start = time.Now()
	ctx, cancel = context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := r.NetResolver().LookupHost(ctx, "slow.test."); err == nil {
		t.Fatal("net.Resolver: no error")
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("net.Resolver with a 200ms deadline took %v", el)
	}
}

func TestCloseAndConcurrentUse(t *testing.T) {
	r, err := New(Options{Upstreams: []string{upstream}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			host := []string{"a.test", "b.test"}[i%2]
			for j := 0; j < 100; j++ {
				if _, err := r.LookupIP(context.Background(), host); err != nil {
					errs <- err
					return
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r.Close()
	r.Close()
	if _, err := r.LookupIP(context.Background(), "a.test"); err == nil {
		t.Fatal("lookup after Close")
	}
}
