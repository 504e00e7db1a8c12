/* Unbounded recursion with a frame the optimiser cannot remove: a clean stack-overflow failure
 * (wasi-libc's shadow stack runs into data, or wasmtime's max_wasm_stack traps), never a crash. */
#include <stdio.h>

int depth(volatile char *parent, int n) {
    volatile char frame[256];
    frame[0] = parent ? parent[0] + 1 : 0;
    return depth(frame, n + 1) + frame[0];
}

int main(void) {
    printf("%d\n", depth(0, 0));
    return 0;
}
