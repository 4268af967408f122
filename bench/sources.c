/* LD_PRELOAD for wrk: each loopback connection from its own source address, in turn among
 * CLUSTERLAB_SOURCES addresses (default 250) from 127.0.1.1 up, so a scheduler that keys on the
 * client's address (hash) sees many clients, as behind a real load balancer. Only connections to
 * 127.0.0.0/8 are touched; a bind that fails leaves the kernel's choice. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

static atomic_uint turn;

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    static unsigned count;
    if (!real) {
        real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
        const char *given = getenv("CLUSTERLAB_SOURCES");
        count = given ? (unsigned)atoi(given) : 250;
        if (count < 1 || count > 254) count = 250;
    }
    const struct sockaddr_in *to = (const struct sockaddr_in *)addr;
    if (addr && addr->sa_family == AF_INET && (ntohl(to->sin_addr.s_addr) >> 24) == 127) {
        unsigned n = atomic_fetch_add(&turn, 1) % count;
        struct sockaddr_in from = {.sin_family = AF_INET};
        from.sin_addr.s_addr = htonl(0x7f000101u + n); /* 127.0.1.1 + n */
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        bind(fd, (const struct sockaddr *)&from, sizeof from);
    }
    return real(fd, addr, len);
}
