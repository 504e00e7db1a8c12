// Copies its input into a scratch file, then spins until it is stopped from outside.
#include <stdio.h>

int main(void) {
    char buf[256];
    size_t n = fread(buf, 1, sizeof buf, stdin);
    FILE *f = fopen("/tmp/copy", "w");
    if (!f) return 3;
    fwrite(buf, 1, n, f);
    fclose(f);
    volatile unsigned long long i = 0;
    for (;;) i++;
}
