/*
 * memmon's demo target: a pretend request handler that leaks at a known, steady rate.
 *
 * Every 100 ms it "handles a request": leak_session_buffer() keeps 1024 bytes that nothing ever
 * frees (10 KiB/s), while parse_request() allocates and frees its scratch memory. memmon should
 * show leak_session_buffer at the top with 1024 bytes per request handled, and nothing live for
 * parse_request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LEAK_BYTES 1024

static void *volatile sink;

__attribute__((noinline)) static void *leak_session_buffer(int request)
{
    char *session = malloc(LEAK_BYTES);
    memset(session, request & 0xff, LEAK_BYTES);
    return session; /* stored nowhere that is ever freed */
}

__attribute__((noinline)) static void parse_request(int request)
{
    char *scratch = malloc(4096);
    memset(scratch, request & 0xff, 4096);
    char *header = calloc(16, 32);
    sink = header;
    scratch = realloc(scratch, 8192);
    sink = scratch;
    free(header);
    free(scratch);
}

__attribute__((noinline)) static void handle_request(int request)
{
    parse_request(request);
    sink = leak_session_buffer(request);
}

int main(void)
{
    printf("leaky_server: pid %d, leaking %d bytes per request, 10 requests/s\n", (int)getpid(), LEAK_BYTES);
    fflush(stdout);
    struct timespec tick = {0, 100 * 1000 * 1000};
    for (int request = 0;; request++) {
        handle_request(request);
        nanosleep(&tick, NULL);
    }
}
