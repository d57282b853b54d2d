/*
 * Ground-truth target: each command on stdin runs one phase with exactly known allocations,
 * then prints "done <command>". Built with frame pointers so every site has a full stack.
 *
 *   leak     leak_exactly: 100 blocks of 1000..1099 bytes, never freed: 104950 bytes live
 *   calloc   leak_calloc: 10 x calloc(10, 100), never freed: 10000 bytes live
 *   realloc  leak_realloc: malloc(10) -> realloc 100 -> realloc 5000, kept: 5000 bytes live
 *            (5110 bytes in 3 allocations)
 *   churn    churn_everything: 1000 x (malloc 64 + free, calloc 4x16 + free,
 *            malloc 32 -> realloc 64 -> realloc 128 -> free): 0 live,
 *            352000 bytes in 5000 allocations
 *   freenull free(NULL) 100 times: nothing
 *   release  release_kept: frees every block kept by the phases above (leak: 100 of them)
 *   million  leak_a_million: 1,000,000 blocks of 16 bytes, kept: 16000000 bytes live
 *   exit     exit(0)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void *volatile sink;
static void *volatile kept[1000];
static void *volatile *million;
static int kept_count;

static void keep(void *p)
{
    kept[kept_count++] = p;
}

__attribute__((noinline)) void leak_exactly(void)
{
    for (int i = 0; i < 100; i++) {
        char *p = malloc(1000 + i);
        memset(p, 1, 1000 + i);
        keep(p);
    }
}

__attribute__((noinline)) void leak_calloc(void)
{
    for (int i = 0; i < 10; i++)
        keep(calloc(10, 100));
}

__attribute__((noinline)) void leak_realloc(void)
{
    char *p = malloc(10);
    memset(p, 1, 10);
    p = realloc(p, 100);
    memset(p, 2, 100);
    p = realloc(p, 5000);
    memset(p, 3, 5000);
    keep(p);
}

__attribute__((noinline)) void churn_everything(void)
{
    for (int i = 0; i < 1000; i++) {
        char *a = malloc(64);
        memset(a, 1, 64);
        sink = a;
        free(a);
        char *b = calloc(4, 16);
        sink = b;
        free(b);
        char *c = malloc(32);
        memset(c, 1, 32);
        c = realloc(c, 64);
        c = realloc(c, 128);
        sink = c;
        free(c);
    }
}

__attribute__((noinline)) void leak_a_million(void)
{
    for (int i = 0; i < 1000000; i++) {
        char *p = malloc(16);
        p[0] = 1;
        million[i] = p;
    }
}

__attribute__((noinline)) void free_null(void)
{
    for (int i = 0; i < 100; i++)
        free(sink = NULL);
}

__attribute__((noinline)) void release_kept(void)
{
    while (kept_count > 0)
        free(kept[--kept_count]);
}

int main(void)
{
    char command[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    million = mmap(NULL, 1000000 * sizeof(void *), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        if (!strcmp(command, "leak"))
            leak_exactly();
        else if (!strcmp(command, "calloc"))
            leak_calloc();
        else if (!strcmp(command, "realloc"))
            leak_realloc();
        else if (!strcmp(command, "churn"))
            churn_everything();
        else if (!strcmp(command, "million"))
            leak_a_million();
        else if (!strcmp(command, "freenull"))
            free_null();
        else if (!strcmp(command, "release"))
            release_kept();
        else if (!strcmp(command, "exit"))
            exit(0);
        else {
            printf("unknown %s\n", command);
            continue;
        }
        printf("done %s\n", command);
    }
    return 0;
}
