/* Forks children for --follow-forks (commands on stdin):
 *
 *   keep         the parent keeps 5 blocks of 2000 bytes at parent_keeps
 *   spawn        forks one child, which waits for orders on a pipe
 *   child-leak   the child keeps 3 blocks of 1000 bytes at child_keeps (it answers itself)
 *   child-exit   the child exits; the parent reaps it
 *   storm N      forks N children at about 1000 per second, each of which lives 200 ms, but every
 *                50th of the first two thirds lives 1 s (so that some outlive an attach on a loaded
 *                machine, and all are gone when the forking ends); for each the parent makes and
 *                frees one block of 64 bytes (its live bytes do not move)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void *volatile kept[8];
static int orders[2];
static pid_t child;

__attribute__((noinline)) void parent_keeps(void)
{
    for (int i = 0; i < 5; i++)
        kept[i] = malloc(2000);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void child_keeps(void)
{
    for (int i = 0; i < 3; i++)
        kept[i] = malloc(1000);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void child_loop(void)
{
    char order[64];
    FILE *from_parent = fdopen(orders[0], "r");
    while (fgets(order, sizeof order, from_parent)) {
        order[strcspn(order, "\n")] = 0;
        if (!strcmp(order, "leak")) {
            child_keeps();
            printf("done child-leak\n");
        } else if (!strcmp(order, "exit"))
            _exit(0);
    }
    _exit(1);
}

__attribute__((noinline)) void spawn_child(void)
{
    if (pipe(orders))
        abort();
    fflush(stdout);
    child = fork();
    if (child == 0)
        child_loop();
    __asm__ volatile("" ::: "memory");
}

static void pause_ms(long ms)
{
    struct timespec pause = {0, ms * 1000000L};
    nanosleep(&pause, NULL);
}

/* Sleeps until `ms` milliseconds after `start` (CLOCK_MONOTONIC). */
static void until_ms(const struct timespec *start, long ms)
{
    struct timespec at = {start->tv_sec + ms / 1000, start->tv_nsec + (ms % 1000) * 1000000L};
    if (at.tv_nsec >= 1000000000L) {
        at.tv_sec++;
        at.tv_nsec -= 1000000000L;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
}

/* Reaps the storm's children that have exited (all of them with `block`), never the spawned
 * child; returns how many. */
static int reap_storm(int block)
{
    int reaped = 0;
    pid_t pid;
    while ((pid = waitpid(-1, NULL, block ? 0 : WNOHANG)) > 0) {
        if (pid == child) {
            child = -1;
            continue;
        }
        reaped++;
        if (block)
            break;
    }
    return reaped;
}

__attribute__((noinline)) void storm(int n)
{
    fflush(stdout);
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int running = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            pause_ms(i % 50 == 0 && i < n - n / 3 ? 1000 : 200);
            _exit(0);
        }
        running++;
        void *block = malloc(64);
        __asm__ volatile("" : : "r"(block) : "memory");
        free(block);
        running -= reap_storm(0);
        until_ms(&start, i + 1);
    }
    while (running > 0)
        running -= reap_storm(1);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char command[256];
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        if (!strcmp(command, "keep"))
            parent_keeps();
        else if (!strcmp(command, "spawn"))
            spawn_child();
        else if (!strcmp(command, "child-leak")) {
            if (write(orders[1], "leak\n", 5) != 5)
                abort();
            continue;
        } else if (!strcmp(command, "child-exit")) {
            if (write(orders[1], "exit\n", 5) != 5)
                abort();
            if (child > 0)
                waitpid(child, NULL, 0);
        } else if (!strncmp(command, "storm ", 6))
            storm(atoi(command + 6));
        printf("done %s\n", command);
    }
    return 0;
}
