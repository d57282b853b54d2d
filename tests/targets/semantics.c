/*
 * Allocator semantics with exact ground truth. Each command runs one phase in a function of its
 * own, then prints "done <command>". Sizes are what the program requests.
 *
 *   realloc_null   realloc_from_null: realloc(NULL, 300), kept: 300 live, 1 block
 *   realloc_zero   realloc_to_zero: malloc(400) then realloc(p, 0): 0 live (400 allocated)
 *   realloc_fail   realloc_fails: malloc(500), realloc(p, huge) fails: 500 live, 1 block
 *   reallocarray   reallocarray_grows: reallocarray(NULL, 10, 30) -> (p, 20, 30), kept, and
 *                  reallocarray(NULL, SIZE_MAX, 2) fails: 600 live, 1 block (900 allocated, 2)
 *   calloc_overflow calloc_overflows: calloc(SIZE_MAX / 2, 4) fails: nothing at all
 *   aligned        aligned_family: posix_memalign 1000 @64, aligned_alloc 2048 @128,
 *                  memalign 3000 @256, memalign 100 @8, valloc 4096, pvalloc 100: all kept:
 *                  10344 live in 6 blocks
 *   cross_thread   alloc_for_other_thread makes 100 x 256 on a new thread; the main thread frees
 *                  60 of them in free_from_main: 10240 live in 40 blocks
 *   fork           fork_child_leaks: the child allocates 10 x 1000 and exits; the parent waits:
 *                  nothing of the child's in the parent
 *   leak_more      leak_more_blocks: 100 x 64 kept: 6400 live in 100 blocks
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *volatile kept[4096];
static int kept_count;
static void *volatile sink;

static void keep(void *p)
{
    kept[kept_count++] = p;
}

/* The compiler must not see through these sizes (it may fold or delete failing calls). */
static volatile size_t huge = SIZE_MAX / 2;
static volatile size_t max_size = SIZE_MAX;
static void *volatile null_block = NULL;

__attribute__((noinline)) void realloc_from_null(void)
{
    keep(realloc(null_block, 300));
}

__attribute__((noinline)) void realloc_to_zero(void)
{
    char *p = malloc(400);
    memset(p, 1, 400);
    sink = realloc(p, 0);
}

__attribute__((noinline)) void realloc_fails(void)
{
    char *p = malloc(500);
    memset(p, 1, 500);
    void *q = realloc(p, huge);
    if (q)
        abort();
    keep(p);
}

__attribute__((noinline)) void reallocarray_grows(void)
{
    char *p = reallocarray(NULL, 10, 30);
    memset(p, 1, 300);
    p = reallocarray(p, 20, 30);
    keep(p);
    if ((sink = reallocarray(NULL, max_size, 2)))
        abort();
}

__attribute__((noinline)) void calloc_overflows(void)
{
    if ((sink = calloc(huge, 4)))
        abort();
}

__attribute__((noinline)) void aligned_family(void)
{
    void *p;
    if (posix_memalign(&p, 64, 1000))
        abort();
    keep(p);
    keep(aligned_alloc(128, 2048));
    keep(memalign(256, 3000));
    keep(memalign(8, 100));
    keep(valloc(4096));
    keep(pvalloc(100));
}

static void *other_thread_blocks[100];

__attribute__((noinline)) static void *alloc_for_other_thread(void *unused)
{
    (void)unused;
    for (int i = 0; i < 100; i++) {
        other_thread_blocks[i] = malloc(256);
        memset(other_thread_blocks[i], 1, 256);
    }
    return NULL;
}

__attribute__((noinline)) void free_from_main(void)
{
    pthread_t thread;
    pthread_create(&thread, NULL, alloc_for_other_thread, NULL);
    pthread_join(thread, NULL);
    for (int i = 0; i < 60; i++)
        free(other_thread_blocks[i]);
}

__attribute__((noinline)) void fork_child_leaks(void)
{
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < 10; i++) {
            char *p = malloc(1000);
            memset(p, 1, 1000);
            keep(p);
        }
        _exit(0);
    }
    waitpid(child, NULL, 0);
}

__attribute__((noinline)) void leak_more_blocks(void)
{
    for (int i = 0; i < 100; i++) {
        char *p = malloc(64);
        memset(p, 1, 64);
        keep(p);
    }
}

int main(void)
{
    static const struct {
        const char *name;
        void (*run)(void);
    } phases[] = {
        {"realloc_null", realloc_from_null}, {"realloc_zero", realloc_to_zero},
        {"realloc_fail", realloc_fails},     {"reallocarray", reallocarray_grows},
        {"calloc_overflow", calloc_overflows}, {"aligned", aligned_family},
        {"cross_thread", free_from_main},    {"fork", fork_child_leaks},
        {"leak_more", leak_more_blocks},
    };
    char command[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        int found = 0;
        for (size_t i = 0; i < sizeof phases / sizeof phases[0]; i++) {
            if (!strcmp(command, phases[i].name)) {
                phases[i].run();
                found = 1;
            }
        }
        if (!strcmp(command, "exit"))
            exit(0);
        printf(found ? "done %s\n" : "unknown %s\n", command);
    }
    return 0;
}
