/* Tries the usual ways out of a WASI sandbox and prints what happened as JSON:
 * absolute host paths, '..' out of the scratch dir, writing into the read-only /job mount,
 * and reading the host environment. Every "opened"/"wrote" must be false and env must be 0. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

static int can_open(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd >= 0) { close(fd); return 1; }
    return 0;
}

int main(void) {
    int env = 0;
    for (char **e = environ; e && *e; e++) env++;
    int wrote_job = 0;
    int fd = open("/job/new.txt", O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) { wrote_job = 1; close(fd); }
    int fd2 = open("/job/input.txt", O_WRONLY);
    int wrote_existing = fd2 >= 0;
    if (fd2 >= 0) close(fd2);
    printf("{\"etc_passwd\": %s, \"dotdot\": %s, \"tmp_dotdot\": %s, \"proc_self\": %s, "
           "\"wrote_job\": %s, \"wrote_existing\": %s, \"env\": %d}\n",
           can_open("/etc/passwd") ? "true" : "false",
           can_open("../../../../etc/passwd") ? "true" : "false",
           can_open("/tmp/../../../../etc/passwd") ? "true" : "false",
           can_open("/proc/self/environ") ? "true" : "false",
           wrote_job ? "true" : "false", wrote_existing ? "true" : "false", env);
    return 0;
}
