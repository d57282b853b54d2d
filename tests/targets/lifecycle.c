/*
 * Lifecycle target: an image that keeps memory, then execs another program (tests/lifecycle.rs).
 * It speaks the ready/done protocol with read(2)/write(2) only: stdio would allocate a buffer
 * memmon tracks, and the ground truth is what the commands allocate.
 *
 *   keep           first_image_keeps: 100 blocks of 1000 bytes, never freed: 100000 bytes live
 *   free-kept      frees them
 *   where          answers the address of the first kept block, in hex
 *   exec PROG ...  execv(PROG, [PROG, ...]) (no "done": the new image speaks for itself)
 *   fork N         forks N children that each allocate a block and exit at once
 *   exit           exit(0)
 */
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void *volatile kept[100];

static void say(const char *a, const char *b)
{
    write(1, a, strlen(a));
    write(1, b, strlen(b));
    write(1, "\n", 1);
}

__attribute__((noinline)) void first_image_keeps(void)
{
    for (int i = 0; i < 100; i++) {
        char *p = malloc(1000);
        memset(p, 1, 1000);
        kept[i] = p;
    }
}

__attribute__((noinline)) void first_image_frees(void)
{
    for (int i = 0; i < 100; i++)
        free(kept[i]);
}

__attribute__((noinline)) void child_allocates(void)
{
    char *p = malloc(64);
    memset(p, 1, 64);
    kept[0] = p;
}

static void fork_children(int n)
{
    for (int i = 0; i < n; i++) {
        pid_t child = fork();
        if (child == 0) {
            child_allocates();
            _exit(0);
        }
    }
    while (wait(NULL) > 0)
        ;
}

int main(void)
{
    char line[512];
    say("ready", "");
    for (;;) {
        size_t len = 0;
        char c = 0;
        while (read(0, &c, 1) == 1 && c != '\n')
            if (len < sizeof line - 1)
                line[len++] = c;
        if (len == 0 && c != '\n')
            return 0;
        line[len] = 0;
        if (strcmp(line, "keep") == 0) {
            first_image_keeps();
        } else if (strcmp(line, "where") == 0) {
            char hex[19] = "0x";
            unsigned long address = (unsigned long)kept[0];
            for (int i = 0; i < 16; i++)
                hex[2 + i] = "0123456789abcdef"[(address >> (60 - 4 * i)) & 0xf];
            hex[18] = 0;
            say(hex, "");
            continue;
        } else if (strcmp(line, "free-kept") == 0) {
            first_image_frees();
        } else if (strncmp(line, "exec ", 5) == 0) {
            char *argv[8] = { 0 };
            int argc = 0;
            for (char *word = strtok(line + 5, " "); word && argc < 7; word = strtok(NULL, " "))
                argv[argc++] = word;
            execv(argv[0], argv);
            say("exec failed: ", argv[0]);
            continue;
        } else if (strncmp(line, "fork ", 5) == 0) {
            fork_children(atoi(line + 5));
        } else if (strcmp(line, "exit") == 0) {
            return 0;
        }
        say("done ", line);
    }
}
