/* A library the `dlopen` target loads after memmon attached: its allocation's stack must be
 * walked through it (built -O2 -fomit-frame-pointer -shared). */
#include <stdlib.h>
#include <string.h>

__attribute__((noinline)) void *plugin_allocate(size_t size)
{
    void *p = malloc(size);
    memset(p, 3, size);
    __asm__ volatile("" ::: "memory");
    return p;
}

void *plugin_entry(size_t size)
{
    void *p = plugin_allocate(size);
    __asm__ volatile("" ::: "memory");
    return p;
}
