/*
 * The program tests/targets/lifecycle.c execs into: it keeps a known amount, from a function
 * of its own, and speaks the same protocol (read(2)/write(2) only, so that nothing else of it
 * is on the heap).
 *
 *   keep   second_image_keeps: 30 blocks of 700 bytes, never freed: 21000 bytes live
 *   exit   exit(0)
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *volatile kept[30];

static void say(const char *a, const char *b)
{
    write(1, a, strlen(a));
    write(1, b, strlen(b));
    write(1, "\n", 1);
}

__attribute__((noinline)) void second_image_keeps(void)
{
    for (int i = 0; i < 30; i++) {
        char *p = malloc(700);
        memset(p, 2, 700);
        kept[i] = p;
    }
}

int main(void)
{
    char line[64];
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
        if (strcmp(line, "keep") == 0)
            second_image_keeps();
        else if (strcmp(line, "exit") == 0)
            return 0;
        say("done ", line);
    }
}
