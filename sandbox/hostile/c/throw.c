/* Reports an error on stderr and aborts (EUNCAUGHT). */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    fprintf(stderr, "boom: thrown on purpose\n");
    abort();
}
