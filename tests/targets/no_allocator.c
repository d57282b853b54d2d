/*
 * A static program with no C library and so no allocator: memmon must refuse it clearly.
 * Built with -nostdlib -static; it just sleeps in pause() until killed.
 */
void _start(void)
{
    for (;;)
        __asm__ volatile("mov $34, %%eax\n\tsyscall" ::: "rax", "rcx", "r11", "memory"); /* pause */
}
