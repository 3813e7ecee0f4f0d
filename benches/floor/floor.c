/*
 * The floor: a "DNS server" that does no DNS work at all. It answers every datagram with
 * the datagram itself, QR set and RCODE NXDOMAIN, which is all dnsperf checks (the ID).
 * Whatever CPU it spends per query is the kernel's price for one UDP query and answer on
 * this machine; no real server can spend less. benches/floor/run.sh measures it in the same
 * peers.sh run as the real servers.
 *
 * usage: floor ADDR PORT MODE PROCESSES
 *   MODE 1: recvfrom + sendto per query; MODE 32: recvmmsg + sendmmsg, up to 32 at once.
 *   PROCESSES: processes sharing the port with SO_REUSEPORT (like a server's workers).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 32
#define SIZE 4096

static void answer(char *msg) {
    msg[2] |= (char)0x80;                  /* QR */
    msg[3] = (char)((msg[3] & 0xf0) | 3);  /* NXDOMAIN */
}

static int serve(const char *addr, int port, int batch) {
    int s = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (s < 0 || inet_pton(AF_INET, addr, &a.sin_addr) != 1 ||
        setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) ||
        bind(s, (struct sockaddr *)&a, sizeof a)) {
        perror("floor: socket");
        return 1;
    }
    static char buf[BATCH][SIZE];
    static struct sockaddr_in peers[BATCH];
    static struct iovec iov[BATCH];
    static struct mmsghdr m[BATCH];
    for (;;) {
        if (batch <= 1) {
            socklen_t len = sizeof peers[0];
            ssize_t n = recvfrom(s, buf[0], SIZE, 0, (struct sockaddr *)&peers[0], &len);
            if (n < 12) continue;
            answer(buf[0]);
            sendto(s, buf[0], (size_t)n, 0, (struct sockaddr *)&peers[0], len);
            continue;
        }
        for (int i = 0; i < BATCH; i++) {
            iov[i] = (struct iovec){buf[i], SIZE};
            m[i].msg_hdr = (struct msghdr){.msg_name = &peers[i], .msg_namelen = sizeof peers[i],
                                           .msg_iov = &iov[i], .msg_iovlen = 1};
        }
        int n = recvmmsg(s, m, BATCH, MSG_WAITFORONE, NULL), k = 0;
        for (int i = 0; i < n; i++) {
            if (m[i].msg_len < 12) continue;
            answer(buf[i]);
            iov[i].iov_len = m[i].msg_len;
            m[k++] = m[i];
        }
        for (int sent = 0; sent < k;) {
            int r = sendmmsg(s, m + sent, (unsigned)(k - sent), 0);
            sent += r > 0 ? r : 1;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: floor ADDR PORT MODE(1|32) PROCESSES\n");
        return 2;
    }
    for (int i = 1; i < atoi(argv[4]); i++)
        if (fork() == 0) break;
    return serve(argv[1], atoi(argv[2]), atoi(argv[3]));
}
