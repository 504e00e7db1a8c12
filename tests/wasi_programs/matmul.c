/* CPU-bound benchmark kernel: C = A x B for n x n doubles (n read as JSON from stdin, default
 * 200), prints the trace of C. Used by benchmarks/bench_wasi.py natively and as a wasi slice. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    unsigned n = 200;
    if (scanf("%u", &n) != 1) n = 200;
    double *a = malloc(sizeof(double) * n * n), *b = malloc(sizeof(double) * n * n),
           *c = calloc((size_t)n * n, sizeof(double));
    if (!a || !b || !c) return 1;
    for (unsigned i = 0; i < n * n; i++) {
        a[i] = (double)(i % 17) / 7.0;
        b[i] = (double)(i % 13) / 5.0;
    }
    for (unsigned i = 0; i < n; i++)
        for (unsigned k = 0; k < n; k++) {
            double aik = a[i * n + k];
            for (unsigned j = 0; j < n; j++) c[i * n + j] += aik * b[k * n + j];
        }
    double trace = 0;
    for (unsigned i = 0; i < n; i++) trace += c[i * n + i];
    printf("%.6f\n", trace);
    return 0;
}
