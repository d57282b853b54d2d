/* The soak's target: a service allocating at a high, steady, paced rate with churn, and a slow
 * leak of exactly LEAK_BYTES bytes every LEAK_PERIOD_MS from one known function, so that what
 * memmon must report is known at any time.
 *
 * Usage: soak ALLOCATIONS_PER_SECOND LEAK_BYTES LEAK_PERIOD_MS
 *
 * One thread, paced in 10 ms ticks against CLOCK_MONOTONIC (a fixed rate, not as fast as it can:
 * on a shared machine the figures then compare minute to minute). Each allocation goes to one of
 * five call sites by a fixed mix: transient blocks freed at once (parse_request: malloc of
 * 16..527 B; build_response: calloc of 1..16 × 64 B), a cache of 16384 blocks (32..1055 B) each
 * replaced at a random slot (cache_insert) or resized in place (cache_resize, realloc), and a
 * session table of 4096 blocks of 512..1535 B replaced more slowly (session_open): blocks live
 * from milliseconds to seconds, and the live heap stays level apart from the leak.
 *
 * Protocol on stdin/stdout (no stdio on stdin: its buffer would be an allocation after attach):
 * "ready" at start, paused. "start" → "done start" and allocation begins. "stats" → one stats
 * line. "pause-leak" stops the leak only, "pause" everything; both answer with a stats line
 * taken after stopping. Stats line: "stats allocations=A frees=F leak_blocks=L leak_bytes=B
 * late_ticks=T" (A counts malloc, calloc and realloc calls; F counts frees of blocks, realloc's
 * of the old block included; T ticks that started more than a tick late, or were skipped after the
 * target fell more than a second behind). */
#define _GNU_SOURCE
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS 10000000LL
#define CACHE_SLOTS 16384
#define SESSION_SLOTS 4096

/* Not static: arrays nobody reads would let the compiler drop the blocks. */
void *cache[CACHE_SLOTS];
void *sessions[SESSION_SLOTS];
void *leaked; /* a list through the first word of each leaked block */
volatile unsigned char sink;

static unsigned long long allocations, frees, leak_blocks, leak_bytes, late_ticks;
static unsigned long long rng = 0x9e3779b97f4a7c15ULL;

static unsigned long long next_random(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void release(void **slot)
{
    if (*slot) {
        free(*slot);
        frees++;
    }
}

__attribute__((noinline)) void parse_request(void)
{
    size_t size = 16 + next_random() % 512;
    char *block = malloc(size);
    memset(block, 1, size);
    sink = block[size - 1];
    allocations++;
    free(block);
    frees++;
}

__attribute__((noinline)) void build_response(void)
{
    size_t count = 1 + next_random() % 16;
    char *block = calloc(count, 64);
    block[0] = 2;
    sink = block[count * 64 - 1];
    allocations++;
    free(block);
    frees++;
}

__attribute__((noinline)) void cache_insert(void)
{
    void **slot = &cache[next_random() % CACHE_SLOTS];
    size_t size = 32 + next_random() % 1024;
    release(slot);
    *slot = malloc(size);
    memset(*slot, 3, size);
    allocations++;
}

__attribute__((noinline)) void cache_resize(void)
{
    void **slot = &cache[next_random() % CACHE_SLOTS];
    size_t size = 32 + next_random() % 1024;
    void *resized = realloc(*slot, size);
    memset(resized, 4, size);
    if (*slot)
        frees++;
    *slot = resized;
    allocations++;
}

__attribute__((noinline)) void session_open(void)
{
    void **slot = &sessions[next_random() % SESSION_SLOTS];
    size_t size = 512 + next_random() % 1024;
    release(slot);
    *slot = malloc(size);
    memset(*slot, 5, size);
    allocations++;
}

/* The slow leak: one block of exactly `size` bytes, kept forever. */
__attribute__((noinline)) void leak_slowly(size_t size)
{
    void **block = malloc(size);
    memset(block, 6, size);
    *block = leaked;
    leaked = block;
    allocations++;
    leak_blocks++;
    leak_bytes += size;
}

/* One allocation by the mix: 40% parse_request, 20% build_response, 29% cache_insert,
 * 10% cache_resize, 1% session_open. */
static void allocate_once(unsigned long long n)
{
    unsigned int pick = n % 100;
    if (pick < 40)
        parse_request();
    else if (pick < 60)
        build_response();
    else if (pick < 89)
        cache_insert();
    else if (pick < 99)
        cache_resize();
    else
        session_open();
}

static void print_stats(void)
{
    printf("stats allocations=%llu frees=%llu leak_blocks=%llu leak_bytes=%llu late_ticks=%llu\n",
           allocations, frees, leak_blocks, leak_bytes, late_ticks);
    fflush(stdout);
}

/* Reads what stdin has; handles every complete line. Returns 0 at end of input. */
static int handle_commands(int *running, int *leaking)
{
    static char line[256];
    static size_t used;
    ssize_t got = read(0, line + used, sizeof line - 1 - used);
    if (got <= 0)
        return 0;
    used += got;
    char *newline;
    while ((newline = memchr(line, '\n', used))) {
        *newline = 0;
        if (!strcmp(line, "start")) {
            *running = *leaking = 1;
            printf("done start\n");
            fflush(stdout);
        } else if (!strcmp(line, "stats")) {
            print_stats();
        } else if (!strcmp(line, "pause-leak")) {
            *leaking = 0;
            print_stats();
        } else if (!strcmp(line, "pause")) {
            *running = *leaking = 0;
            print_stats();
        } else {
            printf("unknown %s\n", line);
            fflush(stdout);
        }
        size_t consumed = newline + 1 - line;
        memmove(line, newline + 1, used - consumed);
        used -= consumed;
    }
    if (used == sizeof line - 1)
        used = 0; /* a line too long to be a command */
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: soak ALLOCATIONS_PER_SECOND LEAK_BYTES LEAK_PERIOD_MS\n");
        return 2;
    }
    unsigned long long per_tick = strtoull(argv[1], NULL, 10) * TICK_NS / 1000000000LL;
    size_t leak_size = strtoull(argv[2], NULL, 10);
    long long leak_period_ns = strtoll(argv[3], NULL, 10) * 1000000LL;
    if (per_tick == 0 || leak_size < sizeof(void *) || leak_period_ns <= 0) {
        fprintf(stderr, "soak: need a rate of at least 100/s, LEAK_BYTES >= %zu and a period > 0\n", sizeof(void *));
        return 2;
    }
    printf("ready\n");
    fflush(stdout);

    int running = 0, leaking = 0;
    unsigned long long n = 0;
    long long next_tick = 0, next_leak = 0;
    for (;;) {
        long long now = now_ns();
        if (running && now >= next_tick) {
            if (next_tick && now > next_tick + TICK_NS)
                late_ticks++;
            /* Behind by more than a second (the machine was busy): skip the missed ticks
             * (counted late) and resume the pace from now rather than burst to catch up. */
            if (next_tick && now - next_tick >= 1000000000LL) {
                late_ticks += (now - next_tick) / TICK_NS;
                next_tick = now;
            }
            next_tick = (next_tick ? next_tick : now) + TICK_NS;
            for (unsigned long long i = 0; i < per_tick; i++)
                allocate_once(n++);
            if (leaking && now >= next_leak) {
                leak_slowly(leak_size);
                next_leak = (next_leak ? next_leak : now) + leak_period_ns;
            }
        }
        long long wait_ns = running ? next_tick - now_ns() : -1;
        struct timespec timeout = {wait_ns / 1000000000LL, wait_ns % 1000000000LL};
        struct pollfd input = {.fd = 0, .events = POLLIN};
        int ready = ppoll(&input, 1, running ? (wait_ns > 0 ? &timeout : &(struct timespec){0, 0}) : NULL, NULL);
        if (ready > 0 && !handle_commands(&running, &leaking))
            return 0;
    }
}
