// The native-code probe: what an escape from an engine could try, as raw system calls. Loaded as
// a shared library into an evaluator (the test-only "native-probe" worktime) after its lockdown,
// each probe returns 0 or a descriptor if the call succeeded, else -errno.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static long result(long r) { return r < 0 ? -errno : r; }

static void *nothing(void *arg) { return arg; }

long probe(const char *what, const char *arg) {
    if (!strcmp(what, "fork")) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid(pid, NULL, 0);
        return result(pid);
    }
    if (!strcmp(what, "clone3")) return result(syscall(SYS_clone3, NULL, 0));
    if (!strcmp(what, "exec")) {  // on success the evaluator would become /bin/true and vanish
        char *argv[] = {(char *)arg, NULL};
        return result(execve(arg, argv, NULL));
    }
    if (!strcmp(what, "thread")) {
        pthread_t t;
        int e = pthread_create(&t, NULL, nothing, NULL);
        if (e) return -e;
        pthread_join(t, NULL);
        return 0;
    }
    if (!strcmp(what, "ptrace")) return result(ptrace(PTRACE_ATTACH, getppid(), NULL, NULL));
    if (!strcmp(what, "kill_parent")) return result(kill(getppid(), 0));
    if (!strcmp(what, "inet")) return result(socket(AF_INET, SOCK_STREAM, 0));
    if (!strcmp(what, "inet_high_bits")) return result(syscall(SYS_socket, AF_INET | (1L << 32), SOCK_STREAM, 0));
    if (!strcmp(what, "unix")) return result(socket(AF_UNIX, SOCK_STREAM, 0));
    if (!strcmp(what, "packet")) return result(socket(AF_PACKET, SOCK_RAW, 0));
    if (!strcmp(what, "socketpair")) {
        int sv[2];
        long r = result(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
        if (r == 0) { close(sv[0]); close(sv[1]); }
        return r;
    }
    if (!strcmp(what, "read")) return result(open(arg, O_RDONLY));
    if (!strcmp(what, "write")) return result(open(arg, O_WRONLY | O_CREAT, 0600));
    if (!strcmp(what, "mount")) return result(mount("none", arg, "tmpfs", 0, NULL));
    if (!strcmp(what, "unshare")) return result(unshare(CLONE_NEWUSER | CLONE_NEWNS));
    if (!strcmp(what, "io_uring")) return result(syscall(SYS_io_uring_setup, 1, NULL));
    if (!strcmp(what, "bpf")) return result(syscall(SYS_bpf, 0, NULL, 0));
    if (!strcmp(what, "userfaultfd")) return result(syscall(SYS_userfaultfd, 0));
    return -ENOSYS - 1000;  // an unknown probe name
}
