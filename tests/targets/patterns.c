/*
 * Memory patterns the leak detector must tell apart, chosen by argv[1]; each runs until killed.
 *
 *   leak     leak_steadily: one block of 1024 bytes every 100 ms, never freed (10 KiB/s),
 *            while churn_requests allocates and frees
 *   churn    churn_requests only: blocks of varying sizes allocated and freed; live memory
 *            goes up and down but does not grow
 *   warmup   warm_cache: after 1 s, grows a cache for 1 second, then holds it (plateau)
 *   single   hold_big_buffer: after 1 s, one 8 MiB block, kept
 *   rotate   cache_entry: 2000 blocks of 1 KiB at start, then 50 a second replaced, oldest
 *            first (a cache rotating slowly): live memory is constant, but an agent attached
 *            after the start sees its tracked blocks grow for 40 s as the old ones are replaced
 * (warmup and single start late so that an agent attached at start sees them happen.)
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void *volatile sink;
static void *ring[64];

static void pause_ms(long ms)
{
    struct timespec tick = {0, ms * 1000 * 1000};
    nanosleep(&tick, NULL);
}

__attribute__((noinline)) void churn_requests(int round)
{
    /* A ring of 64 blocks: each round replaces 8, so live memory wobbles around a constant. */
    for (int i = 0; i < 8; i++) {
        int slot = (round * 8 + i) % 64;
        free(ring[slot]);
        /* Pseudo-random sizes (a fixed LCG): no trend, only noise. */
        static unsigned state = 12345;
        state = state * 1103515245u + 12345u;
        size_t size = 64 + (state >> 8) % 4000;
        ring[slot] = malloc(size);
        memset(ring[slot], 1, size);
    }
}

__attribute__((noinline)) void leak_steadily(void)
{
    char *p = malloc(1024);
    memset(p, 2, 1024);
    sink = p;
}

static void *cache[1000];

__attribute__((noinline)) void warm_cache(int round)
{
    for (int i = 0; i < 10; i++) {
        cache[round * 10 + i] = malloc(2048);
        memset(cache[round * 10 + i], 3, 2048);
    }
}

__attribute__((noinline)) void *hold_big_buffer(void)
{
    char *p = malloc(8 << 20);
    memset(p, 4, 8 << 20);
    return p;
}

#define CACHE_ENTRIES 2000
static void *entries[CACHE_ENTRIES];

__attribute__((noinline)) void *cache_entry(void)
{
    char *p = malloc(1024);
    memset(p, 5, 1024);
    return p;
}

static void rotate_cache(int round)
{
    static int oldest;
    if (round == 0) {
        for (int i = 0; i < CACHE_ENTRIES; i++)
            entries[i] = cache_entry();
        return;
    }
    for (int i = 0; i < 5; i++) {
        free(entries[oldest]);
        entries[oldest] = cache_entry();
        oldest = (oldest + 1) % CACHE_ENTRIES;
    }
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "leak";
    for (int round = 0;; round++) {
        churn_requests(round);
        if (!strcmp(mode, "leak"))
            leak_steadily();
        if (!strcmp(mode, "warmup") && round >= 10 && round < 20)
            warm_cache(round - 10);
        if (!strcmp(mode, "single") && round == 10)
            sink = hold_big_buffer();
        if (!strcmp(mode, "rotate"))
            rotate_cache(round);
        pause_ms(100);
    }
}
