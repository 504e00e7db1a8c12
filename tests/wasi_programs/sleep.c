/* Sleeps inside a WASI call (poll_oneoff): the epoch cannot interrupt a guest blocked in the
 * host, so the runner's supervisor must stop it from outside. */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    sleep(60);
    printf("\"woke up\"\n");
    return 0;
}
