/*
 * Anonymous mappings and the brk heap, with exact ground truth (4096-byte pages).
 *
 *   map      map_pages: mmap 3 pages, kept                       -> 12288 live, 1 mapping
 *            map_and_unmap: mmap 5 pages, munmap them            -> 0 live (20480 mapped)
 *            map_and_trim_head: mmap 4 pages, munmap the first   -> 12288 live, 1 mapping
 *            map_a_file: mmap of a file                          -> not anonymous: not counted
 *   remap    remap_grows: mmap 2 pages, mremap to 6 (may move)   -> 24576 live, 1 mapping
 *   brk      grow_heap: sbrk(65536)                              -> brk heap +65536 exactly
 *   bigmalloc big_malloc: malloc(1 MiB), kept: glibc maps it itself -> the allocator's mapping,
 *            1048576 live heap bytes in big_malloc, no program mapping
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096
static void *volatile kept[16];
static int kept_count;

static void *anon(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        abort();
    memset(p, 1, bytes);
    return p;
}

__attribute__((noinline)) void map_pages(void)
{
    kept[kept_count++] = anon(3 * PAGE);
}

__attribute__((noinline)) void map_and_unmap(void)
{
    void *p = anon(5 * PAGE);
    munmap(p, 5 * PAGE);
}

__attribute__((noinline)) void map_and_trim_head(void)
{
    char *p = anon(4 * PAGE);
    munmap(p, PAGE);
    kept[kept_count++] = p + PAGE;
}

__attribute__((noinline)) void map_a_file(void)
{
    int fd = open("/proc/self/exe", O_RDONLY);
    void *p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        abort();
    kept[kept_count++] = p;
    close(fd);
}

__attribute__((noinline)) void remap_grows(void)
{
    void *p = anon(2 * PAGE);
    p = mremap(p, 2 * PAGE, 6 * PAGE, MREMAP_MAYMOVE);
    if (p == MAP_FAILED)
        abort();
    kept[kept_count++] = p;
}

__attribute__((noinline)) void grow_heap(void)
{
    if (sbrk(65536) == (void *)-1)
        abort();
}

__attribute__((noinline)) void big_malloc(void)
{
    char *p = malloc(1 << 20);
    memset(p, 1, 1 << 20);
    kept[kept_count++] = p;
}

int main(void)
{
    char command[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        if (!strcmp(command, "map")) {
            map_pages();
            map_and_unmap();
            map_and_trim_head();
            map_a_file();
        } else if (!strcmp(command, "remap"))
            remap_grows();
        else if (!strcmp(command, "brk"))
            grow_heap();
        else if (!strcmp(command, "bigmalloc"))
            big_malloc();
        else if (!strcmp(command, "exit"))
            exit(0);
        printf("done %s\n", command);
    }
    return 0;
}
