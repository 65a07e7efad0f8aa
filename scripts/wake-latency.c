/*
 * Thread wake-up latency on this machine: a ping-pong between two threads over pipes.
 * With GAP_US = 0 the echo thread never sleeps long; with a gap, the caller spins GAP_US
 * between pings, so the echo thread blocks and its CPU may idle (a VM halts the vCPU), and
 * each round trip pays the wake-up. Used in BENCHMARKS.md (session 19).
 *
 *   cc -O2 -o /tmp/wake-latency scripts/wake-latency.c -lpthread
 *   /tmp/wake-latency 0; /tmp/wake-latency 100; /tmp/wake-latency 1000
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int ping[2], pong[2];

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void *echo(void *arg) {
    (void)arg;
    char c;
    while (read(ping[0], &c, 1) == 1)
        if (write(pong[1], &c, 1) != 1)
            break;
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double d = *(const double *)a - *(const double *)b;
    return d < 0 ? -1 : d > 0;
}

int main(int argc, char **argv) {
    const int n = 2000;
    double gap = argc > 1 ? atof(argv[1]) : 0;
    if (pipe(ping) || pipe(pong)) {
        perror("pipe");
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, echo, NULL)) {
        perror("pthread_create");
        return 1;
    }
    double *rtt = malloc(n * sizeof(double));
    if (!rtt)
        return 1;
    char c = 'x';
    for (int i = 0; i < n; i++) {
        if (gap > 0) {
            double s = now_us();
            while (now_us() - s < gap) {
            }
        }
        double t0 = now_us();
        if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1) {
            perror("ping");
            return 1;
        }
        rtt[i] = now_us() - t0;
    }
    qsort(rtt, n, sizeof(double), cmp);
    printf("gap %.0f us: round trip p50 %.1f p90 %.1f p99 %.1f us\n", gap, rtt[n / 2],
           rtt[n * 9 / 10], rtt[n * 99 / 100]);
    return 0;
}
