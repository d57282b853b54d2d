/* Loads a library after memmon attached (commands on stdin):
 *
 *   load PATH   dlopen(PATH)
 *   alloc       plugin_entry(4242) from the library, kept: one live block of 4242 bytes whose
 *               stack runs through the library: plugin_allocate ← plugin_entry ← call_plugin ← main
 *   release     plugin_release(that block), where the library has it (its own allocator's free)
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *(*plugin_entry)(size_t);
static void (*plugin_release)(void *);
static void *volatile kept;

__attribute__((noinline)) void call_plugin(void)
{
    kept = plugin_entry(4242);
    __asm__ volatile("" ::: "memory");
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char command[4096];
    printf("ready\n");
    while (fgets(command, sizeof command, stdin)) {
        command[strcspn(command, "\n")] = 0;
        if (!strncmp(command, "load ", 5)) {
            void *library = dlopen(command + 5, RTLD_NOW);
            if (!library) {
                printf("error %s\n", dlerror());
                continue;
            }
            plugin_entry = (void *(*)(size_t))dlsym(library, "plugin_entry");
            plugin_release = (void (*)(void *))dlsym(library, "plugin_release");
        } else if (!strcmp(command, "alloc"))
            call_plugin();
        else if (!strcmp(command, "release") && plugin_release) {
            plugin_release(kept);
            kept = NULL;
        }
        printf("done %s\n", command);
    }
    return 0;
}
