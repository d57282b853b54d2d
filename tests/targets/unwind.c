/*
 * Stack-walk target, built -O2 -fomit-frame-pointer (as `unwind-nofp`): no frame in it or in
 * Debian's glibc keeps a frame pointer, so only CFI unwinding finds the callers. Each command on
 * stdin runs one phase and prints "done <command>" (the tests also run it so under gdb, whose
 * `bt` is the oracle).
 *
 *   strdup   main → run_phase → leak_via_strdup → copy_name → strdup → malloc: 10 x 33 bytes kept
 *   fopen    leak_via_fopen → open_config → fopen → malloc (the FILE), kept open
 *   getline  leak_via_getline → getline → malloc (the line buffer), kept
 *   jit      call_through_jit → [anonymous executable page] → alloc_from_jit → malloc(777):
 *            the walk must stop at the page, truncated
 *   corrupt  corrupt_and_alloc → malloc(555) with its own return address overwritten by
 *            ASCII bytes: truncated, never a garbage frame
 *   thread   a new thread: start_thread → thread_body → leak_in_thread → malloc(4321), kept; its
 *            stack ends where the thread's does (clone3)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static void *volatile kept[64];
static int kept_count;
static FILE *volatile config;

static void keep(void *p)
{
    kept[kept_count++ % 64] = p;
}

__attribute__((noinline)) char *copy_name(const char *name)
{
    char *copy = strdup(name);
    __asm__ volatile("" ::: "memory");
    return copy;
}

__attribute__((noinline)) void leak_via_strdup(void)
{
    for (int i = 0; i < 10; i++)
        keep(copy_name("a name of thirty-two characters!"));
}

__attribute__((noinline)) FILE *open_config(const char *path)
{
    FILE *file = fopen(path, "r");
    __asm__ volatile("" ::: "memory");
    return file;
}

__attribute__((noinline)) void leak_via_fopen(void)
{
    config = open_config("/proc/self/stat");
}

__attribute__((noinline)) void leak_via_getline(FILE *file)
{
    char *line = NULL;
    size_t capacity = 0;
    if (getline(&line, &capacity, file) > 0)
        keep(line);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void *alloc_from_jit(size_t size)
{
    void *p = malloc(size);
    memset(p, 7, size);
    __asm__ volatile("" ::: "memory");
    return p;
}

/* mov %rdi,%rax; mov %rsi,%rdi; sub $8,%rsp; call *%rax; add $8,%rsp; ret */
static const unsigned char jit_stub[] = {
    0x48, 0x89, 0xf8, 0x48, 0x89, 0xf7, 0x48, 0x83, 0xec, 0x08, 0xff, 0xd0, 0x48, 0x83, 0xc4, 0x08, 0xc3,
};

__attribute__((noinline)) void call_through_jit(void)
{
    void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memcpy(page, jit_stub, sizeof jit_stub);
    void *(*stub)(void *(*)(size_t), size_t) = page;
    keep(stub(alloc_from_jit, 777));
}

/* Keeps a frame pointer so that it can find (and spoil) its own return address. */
__attribute__((noinline, optimize("no-omit-frame-pointer"))) void *corrupt_and_alloc(size_t size)
{
    uintptr_t *return_slot = (uintptr_t *)__builtin_frame_address(0) + 1;
    uintptr_t saved = *return_slot;
    *(volatile uintptr_t *)return_slot = 0x74737271706f6e6dULL; /* "mnopqrst" */
    void *p = malloc(size);
    memset(p, 5, size);
    *(volatile uintptr_t *)return_slot = saved;
    return p;
}

__attribute__((noinline)) void leak_in_thread(void)
{
    char *p = malloc(4321);
    memset(p, 4, 4321);
    keep(p);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void *thread_body(void *unused)
{
    (void)unused;
    leak_in_thread();
    __asm__ volatile("" ::: "memory");
    return NULL;
}

__attribute__((noinline)) static void run_phase(const char *phase)
{
    if (!strcmp(phase, "strdup"))
        leak_via_strdup();
    else if (!strcmp(phase, "fopen"))
        leak_via_fopen();
    else if (!strcmp(phase, "getline")) {
        FILE *file = fopen("/proc/self/status", "r");
        leak_via_getline(file);
        fclose(file);
    } else if (!strcmp(phase, "jit"))
        call_through_jit();
    else if (!strcmp(phase, "corrupt"))
        keep(corrupt_and_alloc(555));
    else if (!strcmp(phase, "thread")) {
        pthread_t thread;
        pthread_create(&thread, NULL, thread_body, NULL);
        pthread_join(thread, NULL);
    }
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char command[64];
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        run_phase(command);
        printf("done %s\n", command);
    }
    return 0;
}
