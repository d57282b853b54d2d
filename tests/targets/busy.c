/* A process already allocating flat out when memmon attaches: two threads churn through malloc,
 * calloc, realloc and free from the start, every block freed before its thread's next round, so
 * that the allocator hands the same few addresses out again and again. A free memmon missed
 * while its probes went on would show the next time that address came back.
 *
 * Commands on stdin (unbuffered: no stdio buffer is allocated after "ready"):
 *   rounds  answers "rounds=N", the rounds both threads have finished, all told
 *   pause   stops both threads after their current round: nothing of theirs is live then;
 *           answers "done pause rounds=N"
 * Each round makes three allocations (malloc, calloc, realloc); nothing else allocates after
 * "ready".
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 2

static atomic_int paused;
static atomic_long rounds;
static void *volatile sink;

__attribute__((noinline)) void churn_round(void)
{
    void *block = malloc(64);
    void *zeroed = calloc(2, 32);
    sink = zeroed;
    block = realloc(block, 128);
    sink = block;
    free(zeroed);
    free(block);
}

static void *churn(void *unused)
{
    (void)unused;
    while (!atomic_load(&paused)) {
        churn_round();
        atomic_fetch_add(&rounds, 1);
    }
    return NULL;
}

int main(void)
{
    pthread_t threads[THREADS];
    char command[64];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&threads[i], NULL, churn, NULL);
    setvbuf(stdin, NULL, _IONBF, 0);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        if (strcmp(command, "rounds\n") == 0)
            printf("rounds=%ld\n", atomic_load(&rounds));
        if (strcmp(command, "pause\n") == 0) {
            atomic_store(&paused, 1);
            for (int i = 0; i < THREADS; i++)
                pthread_join(threads[i], NULL);
            printf("done pause rounds=%ld\n", atomic_load(&rounds));
        }
    }
    return 0;
}
