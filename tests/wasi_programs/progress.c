/* Works for about 1.5 s (by the WASI monotonic clock), calling dcp.progress every ~50 ms. */
#include <stdio.h>
#include <time.h>

__attribute__((import_module("dcp"), import_name("progress"))) void dcp_progress(double value);

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(void) {
    double start = now(), last = start;
    volatile unsigned long spin = 0;
    for (double t = start; t - start < 1.5; t = now()) {
        for (int i = 0; i < 10000; i++) spin++;
        if (t - last >= 0.05) {
            dcp_progress((t - start) / 1.5);
            last = t;
        }
    }
    dcp_progress(1.0);
    printf("\"done\"\n");
    return 0;
}
