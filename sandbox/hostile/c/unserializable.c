/* Prints something that is not JSON as its result (EUNSERIALIZABLE). */
#include <stdio.h>

int main(void) {
    printf("{not json");
    return 0;
}
