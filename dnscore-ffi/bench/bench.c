/* Nanoseconds per cached lookup through the C ABI, and (with --getaddrinfo) through
 * glibc's getaddrinfo, which reads /etc/resolv.conf: bench/run.sh points it at a dnscore
 * sidecar on 127.0.0.1:53 inside a private mount and network namespace.
 *
 *   bench UPSTREAM_IP:PORT [--getaddrinfo]
 */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "dnscore.h"

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static size_t build_query(uint8_t *buf, const char *name, uint16_t qtype) {
  size_t n = 0;
  const uint8_t head[12] = {0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0};
  memcpy(buf, head, 12);
  n = 12;
  const char *p = name;
  while (*p) {
    const char *dot = strchr(p, '.');
    size_t len = dot ? (size_t)(dot - p) : strlen(p);
    buf[n++] = (uint8_t)len;
    memcpy(buf + n, p, len);
    n += len;
    p += len + (dot ? 1 : 0);
  }
  buf[n++] = 0;
  buf[n++] = qtype >> 8;
  buf[n++] = qtype & 0xff;
  buf[n++] = 0;
  buf[n++] = 1;
  return n;
}

static void report(const char *name, double ns, int iters) {
  printf("bench: %-40s %10.0f ns/op  (%d ops)\n", name, ns / iters, iters);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s UPSTREAM [--getaddrinfo]\n", argv[0]);
    return 2;
  }
  const char *ups[] = {argv[1]};
  dnscore_config cfg = dnscore_config_default();
  cfg.upstreams = ups;
  cfg.upstreams_len = 1;
  dnscore_error err;
  dnscore_resolver *r = dnscore_resolver_new(&cfg, &err);
  if (!r) {
    fprintf(stderr, "%s\n", err.message);
    return 1;
  }
  dnscore_addr out[8];
  size_t n;
  const int iters = 200000;

  /* Warm the cache, then time cache hits. */
  if (dnscore_lookup_ip(r, "a.test", DNSCORE_AF_UNSPEC, out, 8, &n, 0) != 0) return 1;
  double t0 = now_ns();
  for (int i = 0; i < iters; i++) dnscore_lookup_ip(r, "a.test", DNSCORE_AF_UNSPEC, out, 8, &n, 0);
  report("dnscore_lookup_ip (A+AAAA, cached)", now_ns() - t0, iters);

  t0 = now_ns();
  for (int i = 0; i < iters; i++) dnscore_lookup_ip(r, "a.test", DNSCORE_AF_INET, out, 8, &n, 0);
  report("dnscore_lookup_ip (A, cached)", now_ns() - t0, iters);

  uint8_t q[512], resp[4096];
  size_t qlen = build_query(q, "a.test", 1), len;
  dnscore_resolve(r, q, qlen, resp, sizeof resp, &len, 0);
  t0 = now_ns();
  for (int i = 0; i < iters; i++) dnscore_resolve(r, q, qlen, resp, sizeof resp, &len, 0);
  report("dnscore_resolve (wire A, cached)", now_ns() - t0, iters);
  dnscore_resolver_free(r);

  if (argc > 2 && strcmp(argv[2], "--getaddrinfo") == 0) {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    int rc = getaddrinfo("a.test", NULL, &hints, &res);
    if (rc != 0) {
      fprintf(stderr, "getaddrinfo: %s\n", gai_strerror(rc));
      return 1;
    }
    freeaddrinfo(res);
    const int giters = 5000;
    t0 = now_ns();
    for (int i = 0; i < giters; i++) {
      if (getaddrinfo("a.test", NULL, &hints, &res) == 0) freeaddrinfo(res);
    }
    report("getaddrinfo via sidecar (A+AAAA)", now_ns() - t0, giters);
  }
  return 0;
}
