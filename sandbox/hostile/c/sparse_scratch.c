// A sparse file of 1 TiB apparent size whose holes it then fills, 1 MiB every 1 GiB (ignoring
// errors): only allocated pages use the disk, and the kernel-capped scratch counts exactly those.
// Prints the bytes the file system accepted.
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
    int f = open("/tmp/sparse", O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (f < 0) return 3;
    if (ftruncate(f, 1LL << 40) != 0) return 4;
    static char block[1 << 20];
    memset(block, 'x', sizeof block);
    long long written = 0;
    for (long long i = 0; i < 1024; i++) {
        ssize_t n = pwrite(f, block, sizeof block, i << 30);
        if (n > 0) written += n;
    }
    printf("%lld\n", written);
    return 0;
}
