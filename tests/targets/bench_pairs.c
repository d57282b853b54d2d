/*
 * Benchmark target: "run N [D]" times N malloc(64)+free pairs made D calls deep (default 1)
 * and prints "ns <nanoseconds per pair>". Built as `bench_pairs` (frame pointers) and
 * `bench_pairs-nofp` (the stack-walk benchmark: only CFI finds the callers).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static void *volatile sink;

__attribute__((noinline)) static void pairs_at(int depth, long n)
{
    if (depth > 1) {
        pairs_at(depth - 1, n);
        __asm__ volatile("" ::: "memory"); /* a real call, not a tail jump: one frame a level */
        return;
    }
    for (long i = 0; i < n; i++) {
        void *p = malloc(64);
        sink = p;
        free(p);
    }
}

int main(void)
{
    char command[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        long n;
        int depth = 1;
        if (sscanf(command, "run %ld %d", &n, &depth) < 1)
            return 0;
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        pairs_at(depth, n);
        clock_gettime(CLOCK_MONOTONIC, &end);
        double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
        printf("ns %.1f\n", ns / n);
    }
    return 0;
}
