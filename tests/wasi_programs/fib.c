/* CPU-bound benchmark kernel: naive fib(n), n read as JSON from stdin (default 30). Used by
 * benchmarks/bench_wasi.py both natively (gcc -O2) and as a wasi slice (clang -O2). */
#include <stdio.h>

static unsigned long fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

int main(void) {
    unsigned n = 30;
    if (scanf("%u", &n) != 1) n = 30;
    printf("%lu\n", fib(n));
    return 0;
}
