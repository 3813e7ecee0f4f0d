/* Looks a host up through dnscore, blocking and then asynchronously (from cache).
 *
 *   cc lookup.c $(pkg-config --cflags --libs dnscore) -o lookup
 *   ./lookup 10.100.0.10:53 kubernetes.default.svc.cluster.local
 */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/socket.h>

#include "dnscore.h"

static void print_addrs(const char *how, const dnscore_addr *addrs, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char text[INET6_ADDRSTRLEN];
    int af = addrs[i].family == DNSCORE_AF_INET ? AF_INET : AF_INET6;
    inet_ntop(af, addrs[i].addr, text, sizeof text);
    printf("%s: %s\n", how, text);
  }
}

/* The async callback runs on a resolver thread; this one hands the result to main. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int done;

static void on_lookup(void *user, int code, const dnscore_addr *addrs, size_t n) {
  (void)user;
  if (code == DNSCORE_OK) {
    print_addrs("async", addrs, n);
  } else {
    printf("async: %s\n", dnscore_strerror(code));
  }
  pthread_mutex_lock(&mu);
  done = 1;
  pthread_cond_signal(&cv);
  pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s UPSTREAM_IP:PORT HOST\n", argv[0]);
    return 2;
  }
  const char *upstreams[] = {argv[1]};
  dnscore_config cfg = dnscore_config_default();
  cfg.upstreams = upstreams;
  cfg.upstreams_len = 1;

  dnscore_error err;
  dnscore_resolver *r = dnscore_resolver_new(&cfg, &err);
  if (r == NULL) {
    fprintf(stderr, "dnscore_resolver_new: %s\n", err.message);
    return 1;
  }

  dnscore_addr addrs[16];
  size_t n = 0;
  int rc = dnscore_lookup_ip(r, argv[2], DNSCORE_AF_UNSPEC, addrs, 16, &n, 1000);
  if (rc != DNSCORE_OK) {
    fprintf(stderr, "%s: %s\n", argv[2], dnscore_strerror(rc));
    dnscore_resolver_free(r);
    return 1;
  }
  print_addrs("blocking", addrs, n);

  /* Event-loop programs use the async variant instead (here: answered from the cache). */
  if (dnscore_lookup_ip_async(r, argv[2], DNSCORE_AF_UNSPEC, 1000, on_lookup, NULL) == 0) {
    pthread_mutex_lock(&mu);
    while (!done) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
  }
  dnscore_resolver_free(r);
  return 0;
}
