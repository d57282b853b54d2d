/*
 * Benchmark target: "run N" times N malloc(64)+free pairs and prints "ns <nanoseconds per pair>".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void *volatile sink;

__attribute__((noinline)) static void pairs(long n)
{
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
        if (sscanf(command, "run %ld", &n) != 1)
            return 0;
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        pairs(n);
        clock_gettime(CLOCK_MONOTONIC, &end);
        double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
        printf("ns %.1f\n", ns / n);
    }
    return 0;
}
