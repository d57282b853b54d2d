/*
 * Many distinct allocation sites: "sites N" allocates one 32-byte block, kept, from each of N
 * distinct call stacks (a binary tree of calls through left() and right(), 14 levels deep).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile kept[1 << 14];
static volatile int depth_sink;

__attribute__((noinline)) static void descend(unsigned path, int level, unsigned index);

__attribute__((noinline)) static void left(unsigned path, int level, unsigned index)
{
    descend(path, level, index);
    depth_sink++; /* not a tail call: the return address stays on the stack */
}

__attribute__((noinline)) static void right(unsigned path, int level, unsigned index)
{
    descend(path, level, index);
    depth_sink++;
}

__attribute__((noinline)) static void descend(unsigned path, int level, unsigned index)
{
    if (level == 14) {
        char *p = malloc(32);
        memset(p, 1, 32);
        kept[index] = p;
        return;
    }
    if (path & (1u << level))
        right(path, level + 1, index);
    else
        left(path, level + 1, index);
    depth_sink++;
}

int main(void)
{
    char command[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        unsigned n;
        if (sscanf(command, "sites %u", &n) == 1) {
            for (unsigned i = 0; i < n && i < (1u << 14); i++)
                descend(i, 0, i);
            printf("done %s", command);
        } else
            return 0;
    }
    return 0;
}
