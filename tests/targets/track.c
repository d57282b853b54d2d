/*
 * Ground truth for per-call tracking (tests/track.rs): handle_request is the tracked function.
 * Every call allocates SCRATCH + REPLY bytes and frees them before returning; the innermost
 * call keeps KEEP bytes when id % EVERY == EVERY - 1. Commands on stdin, each answered
 * "done <command>":
 *
 *   keep K EVERY          what the next requests keep (0 0: nothing)
 *   requests N [DEPTH]    handle_request(id, DEPTH) for id 0..N-1: recursion DEPTH deep
 *   outer N               outer_job(id) for id 0..N-1: each allocates OUTER bytes (freed) and
 *                         calls handle_request(id, 0) twice
 *   threads N             two threads at once, each handle_request(id, 0) for id 0..N-1
 *   handoff N             N calls, each also allocating HANDOFF bytes that a helper thread
 *                         frees while the call waits for it
 *   jump                  one call that longjmps out of handle_request (its return unseen)
 *   thread_exit           one call on a new thread that calls pthread_exit inside it
 *   release               frees every kept block (outside any call)
 *   time N                N calls as `requests N`, answered "ns <nanoseconds per call>" (the
 *                         benchmark's cost per tracked call)
 *
 * `kept` is a data object and `warn` is also a libc function: the error cases of the tests.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SCRATCH 300
#define REPLY 200
#define OUTER 1000
#define HANDOFF 777

enum mode { NORMAL, HAND_OFF, JUMP, THREAD_EXIT };

static volatile enum mode mode = NORMAL;
static unsigned keep_bytes, keep_every;
static void *kept[1 << 20];
static unsigned kept_count;
static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
static jmp_buf escape;
static void *volatile sink;

/* The helper that frees handed-off blocks while their call waits. */
static pthread_mutex_t handoff_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t handoff_cond = PTHREAD_COND_INITIALIZER;
static void *handed;

static void *helper(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&handoff_lock);
    for (;;) {
        while (!handed)
            pthread_cond_wait(&handoff_cond, &handoff_lock);
        free(handed);
        handed = NULL;
        pthread_cond_broadcast(&handoff_cond);
    }
    return NULL;
}

static void hand_off(void)
{
    char *block = malloc(HANDOFF);
    memset(block, 7, HANDOFF);
    pthread_mutex_lock(&handoff_lock);
    handed = block;
    pthread_cond_broadcast(&handoff_cond);
    while (handed)
        pthread_cond_wait(&handoff_cond, &handoff_lock);
    pthread_mutex_unlock(&handoff_lock);
}

static __attribute__((noipa)) void keep(unsigned id)
{
    if (!keep_every || id % keep_every != keep_every - 1)
        return;
    char *block = malloc(keep_bytes);
    memset(block, 9, keep_bytes);
    pthread_mutex_lock(&kept_lock);
    kept[kept_count++] = block;
    pthread_mutex_unlock(&kept_lock);
}

__attribute__((noipa)) void handle_request(unsigned id, int depth)
{
    char *scratch = malloc(SCRATCH);
    memset(scratch, (int)id, SCRATCH);
    char *reply = malloc(REPLY);
    memset(reply, (int)id, REPLY);
    if (depth > 0) {
        handle_request(id, depth - 1);
    } else {
        keep(id);
        switch (mode) {
        case HAND_OFF:
            hand_off();
            break;
        case JUMP:
            free(reply);
            free(scratch);
            longjmp(escape, 1);
        case THREAD_EXIT:
            free(reply);
            free(scratch);
            pthread_exit(NULL);
        case NORMAL:
            break;
        }
    }
    sink = reply;
    free(reply);
    free(scratch);
}

__attribute__((noipa)) void outer_job(unsigned id)
{
    char *work = malloc(OUTER);
    memset(work, 1, OUTER);
    handle_request(id, 0);
    handle_request(id, 0);
    sink = work;
    free(work);
}

/* Shares its name with libc's warn(3): `--track-function warn` is ambiguous. */
static __attribute__((noipa)) void warn(const char *line)
{
    printf("unknown %s\n", line);
}

static unsigned per_thread;

static void *worker(void *unused)
{
    (void)unused;
    for (unsigned id = 0; id < per_thread; id++)
        handle_request(id, 0);
    return NULL;
}

static void *exit_inside(void *unused)
{
    (void)unused;
    handle_request(0, 0);
    return NULL;
}

int main(void)
{
    pthread_t helper_thread;
    pthread_create(&helper_thread, NULL, helper, NULL);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        unsigned n = 0, a = 0;
        int depth = 0;
        if (sscanf(line, "keep %u %u", &n, &a) == 2) {
            keep_bytes = n;
            keep_every = a;
        } else if (sscanf(line, "requests %u %d", &n, &depth) >= 1) {
            for (unsigned id = 0; id < n; id++)
                handle_request(id, depth);
        } else if (sscanf(line, "outer %u", &n) == 1) {
            for (unsigned id = 0; id < n; id++)
                outer_job(id);
        } else if (sscanf(line, "threads %u", &n) == 1) {
            pthread_t threads[2];
            per_thread = n;
            for (int t = 0; t < 2; t++)
                pthread_create(&threads[t], NULL, worker, NULL);
            for (int t = 0; t < 2; t++)
                pthread_join(threads[t], NULL);
        } else if (sscanf(line, "handoff %u", &n) == 1) {
            mode = HAND_OFF;
            for (unsigned id = 0; id < n; id++)
                handle_request(id, 0);
            mode = NORMAL;
        } else if (!strcmp(line, "jump")) {
            mode = JUMP;
            if (!setjmp(escape))
                handle_request(0, 0);
            mode = NORMAL;
        } else if (!strcmp(line, "thread_exit")) {
            pthread_t thread;
            mode = THREAD_EXIT;
            pthread_create(&thread, NULL, exit_inside, NULL);
            pthread_join(thread, NULL);
            mode = NORMAL;
        } else if (sscanf(line, "time %u", &n) == 1) {
            struct timespec start, end;
            clock_gettime(CLOCK_MONOTONIC, &start);
            for (unsigned id = 0; id < n; id++)
                handle_request(id, 0);
            clock_gettime(CLOCK_MONOTONIC, &end);
            double ns = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
            printf("ns %.0f\n", ns / (n ? n : 1));
            continue;
        } else if (!strcmp(line, "release")) {
            for (unsigned i = 0; i < kept_count; i++)
                free(kept[i]);
            kept_count = 0;
        } else {
            warn(line);
            continue;
        }
        printf("done %s\n", line);
    }
    return 0;
}
