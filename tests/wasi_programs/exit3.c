/* Writes a diagnostic to stderr and exits with status 3. */
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    fprintf(stderr, "something went wrong: giving up\n");
    exit(3);
}
