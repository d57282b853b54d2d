/* A library with an allocator of its own: linked to Debian's libmimalloc, it allocates through
 * mimalloc's API, which only libmimalloc defines, so the process' malloc (glibc) never sees these
 * blocks. The `dlopen` target loads it after memmon attached (built -O2 -fomit-frame-pointer
 * -shared, linked to libmimalloc.so.2). */
#include <stddef.h>
#include <string.h>

void *mi_malloc(size_t size);
void mi_free(void *p);

__attribute__((noinline)) void *plugin_allocate(size_t size)
{
    void *p = mi_malloc(size);
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

void plugin_release(void *p)
{
    mi_free(p);
}
