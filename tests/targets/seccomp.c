/*
 * Seccomp target (tests/lifecycle.rs): installs the seccomp policy named by argv[1], then
 * speaks the ready/done protocol with read(2)/write(2) only.
 *   strict     SECCOMP_MODE_STRICT (read, write, _exit, sigreturn)
 *   allowlist  a filter allowing only the syscalls this program makes (as systemd's
 *              SystemCallFilter= builds one), killing the process on any other
 *   none       no policy
 * (it warms its heap first: strict mode allows no brk)
 * Commands: leak (100 x malloc(1000), kept), exit.
 */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <malloc.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void *volatile kept[1000];
static int kept_count;

static void say(const char *s) { write(1, s, strlen(s)); }

__attribute__((noinline)) void leak_under_seccomp(void)
{
    for (int i = 0; i < 100; i++) {
        char *p = malloc(1000);
        memset(p, 1, 1000);
        kept[kept_count++] = p;
    }
}

#define ALLOW(nr) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)

static void allowlist(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        ALLOW(SYS_read), ALLOW(SYS_write), ALLOW(SYS_exit), ALLOW(SYS_exit_group),
        ALLOW(SYS_brk), ALLOW(SYS_mmap), ALLOW(SYS_munmap), ALLOW(SYS_mremap),
        ALLOW(SYS_rt_sigreturn), ALLOW(SYS_futex), ALLOW(SYS_clock_nanosleep),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
    };
    struct sock_fprog prog = { .len = sizeof(filter) / sizeof(filter[0]), .filter = filter };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
        say("seccomp failed\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "none";
    /* Warm the heap first: the strict mode allows no brk. */
    mallopt(M_TRIM_THRESHOLD, 64 << 20); /* keep the warmed heap */
    void *warm[300];
    for (int i = 0; i < 300; i++) warm[i] = malloc(1000);
    for (int i = 0; i < 300; i++) free(warm[i]);
    if (strcmp(mode, "strict") == 0) {
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)) { say("seccomp failed\n"); return 1; }
    } else if (strcmp(mode, "allowlist") == 0) {
        allowlist();
    }
    say("ready\n");
    char line[64];
    size_t len = 0;
    for (;;) {
        char c;
        if (read(0, &c, 1) != 1) syscall(SYS_exit, 0);
        if (c != '\n') { if (len < sizeof line - 1) line[len++] = c; continue; }
        line[len] = 0;
        len = 0;
        if (strcmp(line, "leak") == 0) leak_under_seccomp();
        else if (strcmp(line, "exit") == 0) syscall(SYS_exit, 0);
        say("done "); say(line); say("\n");
    }
}
