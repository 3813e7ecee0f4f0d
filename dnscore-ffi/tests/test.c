/* The C ABI from C: every call of include/dnscore.h against the test upstream on loopback
 * (dnscore-testkit's `test-upstream`), argument errors, the async callbacks and threads.
 * Built with gcc and run under valgrind by dnscore-ffi/ci.sh:
 *   test <IP:PORT of the test upstream>
 * Prints "c: N passed, M failed" and exits non-zero on a failure. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dnscore.h"

static int passed, failed;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (cond) {                                                                      \
      passed++;                                                                      \
    } else {                                                                         \
      failed++;                                                                      \
      fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                \
    }                                                                                \
  } while (0)

#define CHECK_RC(rc, want)                                                           \
  do {                                                                               \
    int rc_ = (rc), want_ = (want);                                                  \
    if (rc_ == want_) {                                                              \
      passed++;                                                                      \
    } else {                                                                         \
      failed++;                                                                      \
      fprintf(stderr, "FAIL %s:%d: %s = %d (%s), want %d\n", __FILE__, __LINE__, #rc, \
              rc_, dnscore_strerror(rc_), want_);                                    \
    }                                                                                \
  } while (0)

static dnscore_resolver *make(const char *upstream, uint32_t timeout_ms) {
  const char *ups[] = {upstream};
  dnscore_config cfg = dnscore_config_default();
  cfg.upstreams = ups;
  cfg.upstreams_len = 1;
  cfg.timeout_ms = timeout_ms;
  dnscore_error err;
  dnscore_resolver *r = dnscore_resolver_new(&cfg, &err);
  if (!r) fprintf(stderr, "dnscore_resolver_new: %d %s\n", err.code, err.message);
  return r;
}

/* A wire query for `name` (dotted, no trailing dot) of type `qtype`, without EDNS. */
static size_t build_query(uint8_t *buf, uint16_t id, const char *name, uint16_t qtype) {
  size_t n = 0;
  buf[n++] = id >> 8; buf[n++] = id & 0xff;
  buf[n++] = 0x01; buf[n++] = 0x00;              /* RD */
  buf[n++] = 0; buf[n++] = 1;                    /* QDCOUNT */
  memset(buf + n, 0, 6); n += 6;
  const char *p = name;
  while (*p) {
    const char *dot = strchr(p, '.');
    size_t len = dot ? (size_t)(dot - p) : strlen(p);
    buf[n++] = (uint8_t)len;
    memcpy(buf + n, p, len); n += len;
    p += len + (dot ? 1 : 0);
  }
  buf[n++] = 0;
  buf[n++] = qtype >> 8; buf[n++] = qtype & 0xff;
  buf[n++] = 0; buf[n++] = 1;                    /* IN */
  return n;
}

static void test_config(const char *upstream) {
  dnscore_config cfg = dnscore_config_default();
  CHECK(cfg.upstreams == NULL && cfg.upstreams_len == 0);
  CHECK(cfg.cache_capacity == 10000 && cfg.timeout_ms == 2000);
  CHECK(cfg.attempt_timeout_ms > 0 && cfg.attempt_timeout_ms <= cfg.timeout_ms);
  CHECK(cfg.worker_threads == 2);

  dnscore_error err = {0};
  CHECK(dnscore_resolver_new(&cfg, &err) == NULL);
  CHECK_RC(err.code, DNSCORE_ECONFIG);
  const char *bad[] = {upstream, "localhost:53"};
  cfg.upstreams = bad;
  cfg.upstreams_len = 2;
  CHECK(dnscore_resolver_new(&cfg, &err) == NULL);
  CHECK_RC(err.code, DNSCORE_ECONFIG);
  CHECK(strstr(err.message, "upstreams[1]") != NULL);
  CHECK(dnscore_resolver_new(NULL, &err) == NULL);
  CHECK_RC(err.code, DNSCORE_ENULL);
  CHECK(dnscore_resolver_new(NULL, NULL) == NULL);
  dnscore_resolver_free(NULL);
  CHECK(strcmp(dnscore_strerror(0), "success") == 0);
  CHECK(strcmp(dnscore_strerror(12345), "unknown error code") == 0);
  CHECK(strlen(dnscore_version()) > 0);
}

/* A temporary file holding `text`; its path is written to `path` (at least 64 bytes). */
static void temp_file(char *path, const char *text) {
  strcpy(path, "/tmp/dnscore-c-XXXXXX");
  int fd = mkstemp(path);
  if (fd < 0) { perror("mkstemp"); exit(2); }
  size_t len = strlen(text);
  if (write(fd, text, len) != (ssize_t)len) { perror("write"); exit(2); }
  close(fd);
}

/* A resolv.conf and hosts file of the test's own: short names through the search list. */
static void test_system_conf(const char *upstream) {
  dnscore_config sys = dnscore_config_system();
  CHECK(sys.resolv_conf && strcmp(sys.resolv_conf, "/etc/resolv.conf") == 0);
  CHECK(sys.hosts_file && strcmp(sys.hosts_file, "/etc/hosts") == 0);
  CHECK(dnscore_config_default().resolv_conf == NULL);

  char conf[64], hosts[64];
  temp_file(conf, "search sub.test test\nnameserver 10.255.255.1\noptions ndots:2\n");
  temp_file(hosts, "10.9.9.9 db.internal db\n");
  const char *ups[] = {upstream};
  dnscore_config cfg = dnscore_config_default();
  cfg.upstreams = ups;
  cfg.upstreams_len = 1;
  cfg.resolv_conf = conf;
  cfg.hosts_file = hosts;
  dnscore_error err = {0};
  dnscore_resolver *r = dnscore_resolver_new(&cfg, &err);
  if (!r) fprintf(stderr, "dnscore_resolver_new: %d %s\n", err.code, err.message);
  CHECK(r != NULL);
  if (r) {
    dnscore_addr out[4];
    size_t n = 0;
    /* "a": a.sub.test (NXDOMAIN), then a.test. */
    CHECK_RC(dnscore_lookup_ip(r, "a", DNSCORE_AF_INET, out, 4, &n, 0), DNSCORE_OK);
    CHECK(n == 1 && out[0].family == DNSCORE_AF_INET && memcmp(out[0].addr, "\xc0\x00\x02\x01", 4) == 0);
    CHECK_RC(dnscore_lookup_ip(r, "a", DNSCORE_AF_UNSPEC, out, 4, &n, 0), DNSCORE_OK);
    CHECK(n == 2);
    /* From the hosts file, which no upstream knows. */
    CHECK_RC(dnscore_lookup_ip(r, "db.internal", DNSCORE_AF_UNSPEC, out, 4, &n, 0), DNSCORE_OK);
    CHECK(n == 1 && memcmp(out[0].addr, "\x0a\x09\x09\x09", 4) == 0);
    CHECK_RC(dnscore_lookup_ip(r, "DB", DNSCORE_AF_INET, out, 4, &n, 0), DNSCORE_OK);
    /* No candidate exists (as it is first: two dots; the test upstream serves test. only). */
    CHECK_RC(dnscore_lookup_ip(r, "nope.x.test", DNSCORE_AF_UNSPEC, out, 4, &n, 0), DNSCORE_ENXDOMAIN);
    dnscore_resolver_free(r);
  }

  /* The file's nameservers when no upstream is given (built, not asked). */
  cfg.upstreams = NULL;
  cfg.upstreams_len = 0;
  r = dnscore_resolver_new(&cfg, &err);
  CHECK(r != NULL);
  dnscore_resolver_free(r);

  /* Files that cannot be read: ECONFIG, naming the file. */
  unlink(hosts);
  r = dnscore_resolver_new(&cfg, &err);
  CHECK(r == NULL);
  CHECK_RC(err.code, DNSCORE_ECONFIG);
  CHECK(strstr(err.message, hosts) != NULL);
  unlink(conf);
  cfg.hosts_file = NULL;
  r = dnscore_resolver_new(&cfg, &err);
  CHECK(r == NULL);
  CHECK_RC(err.code, DNSCORE_ECONFIG);
  CHECK(strstr(err.message, conf) != NULL);
}

static void test_lookup(dnscore_resolver *r) {
  dnscore_addr out[8];
  size_t n = 0;
  CHECK_RC(dnscore_lookup_ip(r, "a.test", DNSCORE_AF_UNSPEC, out, 8, &n, 0), DNSCORE_OK);
  CHECK(n == 2);
  uint8_t v4[4] = {192, 0, 2, 1};
  struct in6_addr v6;
  inet_pton(AF_INET6, "2001:db8::1", &v6);
  CHECK(out[0].family == DNSCORE_AF_INET && memcmp(out[0].addr, v4, 4) == 0);
  CHECK(out[1].family == DNSCORE_AF_INET6 && memcmp(out[1].addr, &v6, 16) == 0);

  CHECK_RC(dnscore_lookup_ip(r, "a.test.", DNSCORE_AF_INET, out, 8, &n, 1000), DNSCORE_OK);
  CHECK(n == 1 && out[0].family == DNSCORE_AF_INET);
  CHECK_RC(dnscore_lookup_ip(r, "A.Test", DNSCORE_AF_INET6, out, 8, &n, 0), DNSCORE_OK);
  CHECK(n == 1 && out[0].family == DNSCORE_AF_INET6);
  CHECK_RC(dnscore_lookup_ip(r, "b.test", DNSCORE_AF_INET, out, 8, &n, 0), DNSCORE_OK);
  CHECK(n == 1 && out[0].addr[3] == 2);
  CHECK_RC(dnscore_lookup_ip(r, "203.0.113.9", DNSCORE_AF_UNSPEC, out, 8, &n, 0), DNSCORE_OK);
  CHECK(n == 1 && out[0].addr[3] == 9);

  CHECK_RC(dnscore_lookup_ip(r, "nope.test", DNSCORE_AF_UNSPEC, out, 8, &n, 0), DNSCORE_ENXDOMAIN);
  CHECK_RC(dnscore_lookup_ip(r, "b.test", DNSCORE_AF_INET6, out, 8, &n, 0), DNSCORE_ENODATA);
  CHECK_RC(dnscore_lookup_ip(r, "a..test", DNSCORE_AF_UNSPEC, out, 8, &n, 0), DNSCORE_EBADNAME);

  /* Too small: *n says how many there are, out is untouched. */
  dnscore_addr one = {.family = 77};
  n = 0;
  CHECK_RC(dnscore_lookup_ip(r, "a.test", DNSCORE_AF_UNSPEC, &one, 1, &n, 0), DNSCORE_ENOSPC);
  CHECK(n == 2 && one.family == 77);
  CHECK_RC(dnscore_lookup_ip(r, "a.test", DNSCORE_AF_UNSPEC, NULL, 0, &n, 0), DNSCORE_ENOSPC);

  /* Bad arguments never crash. */
  CHECK_RC(dnscore_lookup_ip(NULL, "a.test", 0, out, 8, &n, 0), DNSCORE_ENULL);
  CHECK_RC(dnscore_lookup_ip(r, NULL, 0, out, 8, &n, 0), DNSCORE_ENULL);
  CHECK_RC(dnscore_lookup_ip(r, "a.test", 0, NULL, 8, &n, 0), DNSCORE_ENULL);
  CHECK_RC(dnscore_lookup_ip(r, "a.test", 0, out, 8, NULL, 0), DNSCORE_ENULL);
  CHECK_RC(dnscore_lookup_ip(r, "a\xff\xfe.test", 0, out, 8, &n, 0), DNSCORE_EUTF8);
  CHECK_RC(dnscore_lookup_ip(r, "a.test", 2, out, 8, &n, 0), DNSCORE_EINVAL);
}

static void test_resolve(dnscore_resolver *r) {
  uint8_t q[512], resp[4096];
  size_t len = 0;
  size_t qlen = build_query(q, 0xbeef, "a.test", 1);
  CHECK_RC(dnscore_resolve(r, q, qlen, resp, sizeof resp, &len, 0), DNSCORE_OK);
  CHECK(len > qlen && resp[0] == 0xbe && resp[1] == 0xef);
  CHECK((resp[2] & 0x80) && (resp[3] & 0x0f) == 0); /* QR, NOERROR */
  CHECK(resp[6] == 0 && resp[7] == 1);              /* one answer */

  qlen = build_query(q, 0x0102, "nope.test", 1);
  CHECK_RC(dnscore_resolve(r, q, qlen, resp, sizeof resp, &len, 0), DNSCORE_OK);
  CHECK((resp[3] & 0x0f) == 3); /* NXDOMAIN is an answer, not an error */

  /* big.test TXT is over 2000 bytes: ENOSPC says how much is needed. */
  qlen = build_query(q, 7, "big.test", 16);
  size_t needed = 0;
  CHECK_RC(dnscore_resolve(r, q, qlen, resp, 512, &needed, 0), DNSCORE_ENOSPC);
  CHECK(needed > 2000 && needed <= sizeof resp);
  CHECK_RC(dnscore_resolve(r, q, qlen, resp, needed, &len, 0), DNSCORE_OK);
  CHECK(len == needed);
  /* As a datagram without EDNS: cut to 512 bytes with TC=1. */
  CHECK_RC(dnscore_resolve_datagram(r, q, qlen, resp, sizeof resp, &len, 0), DNSCORE_OK);
  CHECK(len <= 512 && (resp[2] & 0x02));

  uint8_t junk[3] = {1, 2, 3};
  CHECK_RC(dnscore_resolve(r, junk, sizeof junk, resp, sizeof resp, &len, 0), DNSCORE_EMALFORMED);
  CHECK_RC(dnscore_resolve(r, q, 0, resp, sizeof resp, &len, 0), DNSCORE_EINVAL);
  CHECK_RC(dnscore_resolve(r, NULL, 12, resp, sizeof resp, &len, 0), DNSCORE_ENULL);
  CHECK_RC(dnscore_resolve(r, q, qlen, NULL, sizeof resp, &len, 0), DNSCORE_ENULL);
  CHECK_RC(dnscore_resolve(r, q, qlen, resp, sizeof resp, NULL, 0), DNSCORE_ENULL);
  CHECK_RC(dnscore_resolve(NULL, q, qlen, resp, sizeof resp, &len, 0), DNSCORE_ENULL);
}

/* One async result, handed from a resolver thread to the test thread. */
struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done, code;
  size_t n;
  uint8_t first;
};

static void waiter_init(struct waiter *w) {
  memset(w, 0, sizeof *w);
  pthread_mutex_init(&w->mu, NULL);
  pthread_cond_init(&w->cv, NULL);
}

static int waiter_wait(struct waiter *w, int want_done) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  pthread_mutex_lock(&w->mu);
  while (w->done < want_done) {
    if (pthread_cond_timedwait(&w->cv, &w->mu, &until) != 0) break;
  }
  int done = w->done;
  pthread_mutex_unlock(&w->mu);
  return done;
}

static void waiter_destroy(struct waiter *w) {
  pthread_mutex_destroy(&w->mu);
  pthread_cond_destroy(&w->cv);
}

static void on_lookup(void *user, int code, const dnscore_addr *addrs, size_t n) {
  struct waiter *w = user;
  pthread_mutex_lock(&w->mu);
  w->code = code;
  w->n = n;
  w->first = (addrs && n) ? addrs[0].addr[0] : 0;
  w->done++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void on_resolve(void *user, int code, const uint8_t *resp, size_t len) {
  struct waiter *w = user;
  pthread_mutex_lock(&w->mu);
  w->code = code;
  w->n = len;
  w->first = (resp && len) ? resp[1] : 0;
  w->done++;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static void test_async(dnscore_resolver *r) {
  struct waiter w;
  waiter_init(&w);
  CHECK_RC(dnscore_lookup_ip_async(r, "b.test", DNSCORE_AF_UNSPEC, 0, on_lookup, &w), DNSCORE_OK);
  CHECK(waiter_wait(&w, 1) == 1);
  CHECK_RC(w.code, DNSCORE_OK);
  CHECK(w.n == 1 && w.first == 192);

  CHECK_RC(dnscore_lookup_ip_async(r, "nope.test", 0, 0, on_lookup, &w), DNSCORE_OK);
  CHECK(waiter_wait(&w, 2) == 2);
  CHECK_RC(w.code, DNSCORE_ENXDOMAIN);
  CHECK(w.n == 0);

  uint8_t q[512];
  size_t qlen = build_query(q, 0x4242, "a.test", 28);
  CHECK_RC(dnscore_resolve_async(r, q, qlen, 0, on_resolve, &w), DNSCORE_OK);
  memset(q, 0, sizeof q); /* the query was copied */
  CHECK(waiter_wait(&w, 3) == 3);
  CHECK_RC(w.code, DNSCORE_OK);
  CHECK(w.n > 12 && w.first == 0x42);

  /* Refused up front: the callback is never called. */
  CHECK_RC(dnscore_lookup_ip_async(r, "a.test", 0, 0, NULL, &w), DNSCORE_ENULL);
  CHECK_RC(dnscore_lookup_ip_async(r, NULL, 0, 0, on_lookup, &w), DNSCORE_ENULL);
  CHECK_RC(dnscore_lookup_ip_async(r, "a.test", 9, 0, on_lookup, &w), DNSCORE_EINVAL);
  CHECK_RC(dnscore_resolve_async(r, NULL, 5, 0, on_resolve, &w), DNSCORE_ENULL);
  CHECK_RC(dnscore_resolve_async(r, q, 0, 0, on_resolve, &w), DNSCORE_EINVAL);
  usleep(50 * 1000);
  CHECK(w.done == 3);
  waiter_destroy(&w);
}

struct worker {
  dnscore_resolver *r;
  int ok;
};

static void *worker_main(void *arg) {
  struct worker *wk = arg;
  for (int i = 0; i < 200; i++) {
    dnscore_addr out[4];
    size_t n = 0;
    const char *host = (i % 2) ? "a.test" : "b.test";
    if (dnscore_lookup_ip(wk->r, host, DNSCORE_AF_INET, out, 4, &n, 0) == DNSCORE_OK && n == 1)
      wk->ok++;
  }
  return NULL;
}

static void test_threads(dnscore_resolver *r) {
  enum { THREADS = 8 };
  pthread_t t[THREADS];
  struct worker wk[THREADS];
  for (int i = 0; i < THREADS; i++) {
    wk[i] = (struct worker){r, 0};
    pthread_create(&t[i], NULL, worker_main, &wk[i]);
  }
  int ok = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    ok += wk[i].ok;
  }
  CHECK(ok == THREADS * 200);
}

/* An upstream that never answers: queries time out, and freeing the resolver with one in
 * flight calls its callback with DNSCORE_ESHUTDOWN (before dnscore_resolver_free returns,
 * unless the threads took more than its one second to stop: so wait for it, as a careful
 * caller does before freeing what `user` points to). */
static void test_timeout_and_shutdown(void) {
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  bind(s, (struct sockaddr *)&sa, sizeof sa);
  getsockname(s, (struct sockaddr *)&sa, &sl);
  char hole[64];
  snprintf(hole, sizeof hole, "127.0.0.1:%d", ntohs(sa.sin_port));

  dnscore_resolver *r = make(hole, 5000);
  CHECK(r != NULL);
  if (!r) return;
  dnscore_addr out[2];
  size_t n = 0;
  CHECK_RC(dnscore_lookup_ip(r, "slow.test", 0, out, 2, &n, 100), DNSCORE_ETIMEOUT);
  struct waiter w;
  waiter_init(&w);
  CHECK_RC(dnscore_lookup_ip_async(r, "slow.test", 0, 0, on_lookup, &w), DNSCORE_OK);
  dnscore_resolver_free(r);
  CHECK(waiter_wait(&w, 1) == 1);
  CHECK_RC(w.code, DNSCORE_ESHUTDOWN);
  waiter_destroy(&w);
  close(s);
}

int main(int argc, char **argv) {
  const char *upstream = argc > 1 ? argv[1] : getenv("DNSCORE_TEST_UPSTREAM");
  if (!upstream) {
    fprintf(stderr, "usage: %s IP:PORT (the address test-upstream printed)\n", argv[0]);
    return 2;
  }
  test_config(upstream);
  test_system_conf(upstream);
  dnscore_resolver *r = make(upstream, 2000);
  CHECK(r != NULL);
  if (r) {
    test_lookup(r);
    test_resolve(r);
    test_async(r);
    test_threads(r);
    dnscore_resolver_free(r);
  }
  test_timeout_and_shutdown();
  printf("c: %d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
