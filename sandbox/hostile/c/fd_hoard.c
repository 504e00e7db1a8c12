// Opens a scratch file until it runs out of descriptors and never closes them: the guest meets
// its own limit, the store closes them all when the slice ends, the worker keeps serving.
#include <fcntl.h>
#include <stdio.h>

int main(void) {
    int n = 0;
    while (n < 100000 && open("/tmp/f", O_RDONLY | O_CREAT, 0600) >= 0) n++;
    printf("%d\n", n);
    return 0;
}
