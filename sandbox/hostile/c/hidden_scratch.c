// Hides 32 MiB below 20 levels of 250-character directory names: the host path is longer than
// PATH_MAX, so a walk by whole paths cannot see it. The scratch cap must still stop the slice.
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    char name[251];
    memset(name, 'L', 250);
    name[250] = 0;
    int dir = open("/tmp", O_RDONLY | O_DIRECTORY);
    for (int i = 0; i < 20 && dir >= 0; i++) {
        mkdirat(dir, name, 0700);
        int next = openat(dir, name, O_RDONLY | O_DIRECTORY);
        close(dir);
        dir = next;
    }
    if (dir < 0) return 3;
    int f = openat(dir, "fill", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (f < 0) return 4;
    static char block[1 << 20];
    memset(block, 'x', sizeof block);
    for (int i = 0; i < 32; i++) write(f, block, sizeof block);
    close(f);
    time_t end = time(NULL) + 5;  // stay alive while the watchdog measures /tmp
    while (time(NULL) < end) {}
    printf("\"hidden\"\n");
    return 0;
}
