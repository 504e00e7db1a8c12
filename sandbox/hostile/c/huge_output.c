/* Prints an endless JSON array (EOUTPUTLIMIT). */
#include <stdio.h>

int main(void) {
    fputs("[", stdout);
    for (unsigned long i = 0;; i++) printf("%lu,", i);
}
