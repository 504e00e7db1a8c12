/* Tries to read the host's /etc/passwd; under the wasi worktime this must fail inside the guest.
 * Prints {"opened": false, "errno": E, "error": "..."} or the first line if it somehow succeeds. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    FILE *f = fopen("/etc/passwd", "r");
    if (!f) {
        int e = errno;
        printf("{\"opened\": false, \"errno\": %d, \"error\": \"%s\"}\n", e, strerror(e));
        return 0;
    }
    char line[256] = {0};
    fgets(line, sizeof line, f);
    line[strcspn(line, "\n\"\\")] = 0;
    printf("{\"opened\": true, \"line\": \"%s\"}\n", line);
    return 0;
}
