// Opens a file in its scratch /tmp, unlinks it and keeps writing (1 GiB, ignoring errors): no
// directory walk can see the file, yet it fills the disk until closed. The kernel-capped scratch
// stops it at the cap; prints how many bytes the file system accepted.
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    int f = open("/tmp/hidden", O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (f < 0) return 3;
    unlink("/tmp/hidden");
    static char block[1 << 20];
    memset(block, 'x', sizeof block);
    long long written = 0;
    for (int i = 0; i < 1024; i++) {
        ssize_t n = write(f, block, sizeof block);
        if (n > 0) written += n;
    }
    printf("%lld\n", written);
    return 0;
}
