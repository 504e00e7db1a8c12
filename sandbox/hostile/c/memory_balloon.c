/* Allocates and touches 1 MiB blocks until malloc fails, then aborts (EMEMORYLIMIT). The blocks
 * are chained into a global list so the compiler cannot elide the allocations. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *volatile head = 0;

int main(void) {
    size_t total = 0;
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) {
            fprintf(stderr, "malloc failed after %zu MiB\n", total >> 20);
            abort();
        }
        memset(p, 0xAB, 1 << 20);
        *(void **)p = head;
        head = p;
        total += 1 << 20;
    }
}
