/*
 * Benchmark target for the stack walk, built without frame pointers (`bench_depth-nofp`):
 * "run N D" times N malloc(64)+free pairs made D calls deep and prints "ns <per pair>".
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
        int depth;
        if (sscanf(command, "run %ld %d", &n, &depth) != 2)
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
