// A program for `memmon run` with known ground truth: `launch MODE [EXIT_CODE]`.
//
// Every mode but `clean` leaks through leak_here(): 3 × malloc(100), calloc(10, 50), and a
// malloc(64) grown by realloc to 128 — 928 bytes in 5 blocks — after churning 10 × 32 bytes.
// Total: 16 allocs, 11 frees (the churn and realloc's old block), 1,312 bytes allocated.
// Output goes through write(2) only: stdio would allocate a buffer of its own.
//
//   leak   leak, exit EXIT_CODE (default 0)
//   clean  churn only, exit EXIT_CODE
//   segv   leak, then die of SIGSEGV
//   wait   leak, print "pid N", then wait for a line on stdin (for signals sent meanwhile)
//   fork   leak; a forked child leaks 2000 bytes in child_leak() and exits 0; the parent
//          waits for it, then leaks 1000 bytes in parent_leak()
//   echo   copy stdin to stdout, exit EXIT_CODE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *volatile sink[8];

__attribute__((noinline)) static void churn(void) {
    for (int i = 0; i < 10; i++) {
        void *p = malloc(32);
        sink[7] = p;
        free(p);
    }
}

__attribute__((noinline)) void leak_here(void) {
    for (int i = 0; i < 3; i++) sink[i] = malloc(100);
    sink[3] = calloc(10, 50);
    void *grown = malloc(64);
    sink[4] = realloc(grown, 128);
}

__attribute__((noinline)) void child_leak(void) { sink[5] = malloc(2000); }
__attribute__((noinline)) void parent_leak(void) { sink[6] = malloc(1000); }

static void say(const char *text) { (void)!write(1, text, strlen(text)); }

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "leak";
    int code = argc > 2 ? atoi(argv[2]) : 0;
    if (strcmp(mode, "echo") == 0) {
        char buffer[4096];
        ssize_t n;
        while ((n = read(0, buffer, sizeof buffer)) > 0) (void)!write(1, buffer, n);
        return code;
    }
    churn();
    if (strcmp(mode, "clean") == 0) return code;
    leak_here();
    if (strcmp(mode, "segv") == 0) {
        raise(SIGSEGV);
    } else if (strcmp(mode, "wait") == 0) {
        char line[64];
        snprintf(line, sizeof line, "pid %d\n", (int)getpid());
        say(line);
        (void)!read(0, line, sizeof line);
    } else if (strcmp(mode, "fork") == 0) {
        pid_t child = fork();
        if (child == 0) {
            child_leak();
            exit(0);
        }
        waitpid(child, NULL, 0);
        parent_leak();
    }
    return code;
}
