/* Growth over time, for the always-on tier: leaks on command from one known function (what a
 * capture window must attribute), and churns malloc/free on a thread (a malloc-heavy target for
 * the overhead budget); "release" frees what it leaked. Protocol: "ready", then "done COMMAND" after each command. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Not static: a static array nobody reads would let the compiler drop the blocks. */
void *kept[1 << 16];
size_t kept_count;
static volatile int churning;
static pthread_t churner;

/* One block of `size` bytes, written so that it is resident (RSS grows with it). */
__attribute__((noinline)) void leak_steadily(size_t size)
{
    void *block = malloc(size);
    memset(block, 0x5a, size);
    if (kept_count < sizeof kept / sizeof kept[0])
        kept[kept_count++] = block;
}

__attribute__((noinline)) static void *churn(void *unused)
{
    (void)unused;
    while (churning) {
        void *block = malloc(64);
        __asm__ volatile("" : : "r"(block) : "memory");
        free(block);
    }
    return NULL;
}

int main(void)
{
    char command[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        unsigned long count, size;
        if (sscanf(command, "leak %lu %lu", &count, &size) == 2) {
            for (unsigned long i = 0; i < count; i++)
                leak_steadily(size);
        } else if (!strcmp(command, "churn")) {
            churning = 1;
            pthread_create(&churner, NULL, churn, NULL);
        } else if (!strcmp(command, "stop")) {
            churning = 0;
            pthread_join(churner, NULL);
        } else if (!strcmp(command, "release")) {
            while (kept_count > 0)
                free(kept[--kept_count]);
        } else if (!strcmp(command, "exit")) {
            exit(0);
        } else {
            printf("unknown %s\n", command);
            continue;
        }
        printf("done %s\n", command);
    }
    return 0;
}
