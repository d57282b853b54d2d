/* A thread storm (commands on stdin):
 *
 *   storm N   starts N threads, all alive at once; released together, each keeps one block of
 *             100 bytes at thread_keeps and makes and frees one of 200 bytes at thread_churns;
 *             all are joined before the answer: N * 100 bytes live, 2N allocations, N frees
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *volatile kept[100000];
static pthread_barrier_t start_together;

__attribute__((noinline)) void thread_keeps(long slot)
{
    kept[slot] = malloc(100);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void thread_churns(void)
{
    void *block = malloc(200);
    __asm__ volatile("" : : "r"(block) : "memory");
    free(block);
}

static void *thread_main(void *slot)
{
    pthread_barrier_wait(&start_together);
    thread_keeps((long)slot);
    thread_churns();
    return NULL;
}

__attribute__((noinline)) void storm(long n)
{
    pthread_t *threads = calloc(n, sizeof *threads);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_barrier_init(&start_together, NULL, n + 1);
    for (long i = 0; i < n; i++)
        if (pthread_create(&threads[i], &attr, thread_main, (void *)i))
            abort();
    pthread_barrier_wait(&start_together);
    for (long i = 0; i < n; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&start_together);
    free(threads);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char command[256];
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        if (!strncmp(command, "storm ", 6))
            storm(atol(command + 6));
        printf("done %s\n", command);
    }
    return 0;
}
