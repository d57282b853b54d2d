/*
 * Walk-memo target (built with and without frame pointers). The kernel memoizes a stack walk by
 * where it starts (the allocator's return address and stack pointer) and recalls it only while
 * every stack word the walk read is unchanged. This program makes the cases a memo could get
 * wrong. Each command on stdin runs one phase and prints "done <command>".
 *
 *   alternate   2,000 calls alternating path_a → allocate(1000) and path_b → allocate(2000):
 *               the malloc call in allocate has the same return address and the same stack
 *               pointer on both paths (path_a and path_b are called from one function at one
 *               depth), only the return address into path_a or path_b differs; 1,000 blocks
 *               of each are kept, each on its own path
 *   deeper      the same two frames further up: 2,000 calls alternating outer_a → middle →
 *               allocate(3000) and outer_b → middle → allocate(4000), 1,000 of each kept
 *   repeat      5,000 calls of path_c → allocate(16), each freed at once: one site, recalled
 *   recurse     allocate(5000) 80 calls deep (deeper than a memo holds), 10 times, kept
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile sink;
static void *kept[4096];
static int kept_count;

static void keep(void *p)
{
    kept[kept_count++ % 4096] = p;
}

__attribute__((noinline)) void *allocate(size_t size)
{
    void *p = malloc(size);
    memset(p, 1, size < 64 ? size : 64);
    __asm__ volatile("" ::: "memory");
    return p;
}

__attribute__((noinline)) void path_a(void)
{
    keep(allocate(1000));
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void path_b(void)
{
    keep(allocate(2000));
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void path_c(void)
{
    sink = allocate(16);
    free(sink);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void middle(size_t size)
{
    keep(allocate(size));
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void outer_a(void)
{
    middle(3000);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void outer_b(void)
{
    middle(4000);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void recurse(int depth)
{
    if (depth == 0)
        keep(allocate(5000));
    else
        recurse(depth - 1);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void run_phase(const char *command)
{
    if (!strcmp(command, "alternate")) {
        for (int i = 0; i < 2000; i++)
            if (i % 2)
                path_b();
            else
                path_a();
    } else if (!strcmp(command, "deeper")) {
        for (int i = 0; i < 2000; i++)
            if (i % 2)
                outer_b();
            else
                outer_a();
    } else if (!strcmp(command, "repeat")) {
        for (int i = 0; i < 5000; i++)
            path_c();
    } else if (!strcmp(command, "recurse")) {
        for (int i = 0; i < 10; i++)
            recurse(80);
    }
}

int main(void)
{
    char command[64];
    setvbuf(stdin, NULL, _IONBF, 0);
    printf("ready\n");
    fflush(stdout);
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        run_phase(command);
        printf("done %s\n", command);
        fflush(stdout);
    }
    return 0;
}
