/* Reads a JSON array of integers on stdin, prints {"sum": S, "count": N, "argv": [...]}.
 * A deliberately tiny JSON reader: digits, '-', separators. Enough for the ABI test. */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    long long sum = 0, cur = 0;
    int count = 0, in_num = 0, neg = 0, c;
    while ((c = getchar()) != EOF) {
        if (c == '-') { neg = 1; }
        else if (c >= '0' && c <= '9') { cur = cur * 10 + (c - '0'); in_num = 1; }
        else if (in_num) { sum += neg ? -cur : cur; count++; cur = 0; in_num = 0; neg = 0; }
    }
    if (in_num) { sum += neg ? -cur : cur; count++; }
    fprintf(stderr, "summed %d numbers\n", count);
    printf("{\"sum\": %lld, \"count\": %d, \"argv\": [", sum, count);
    for (int i = 1; i < argc; i++) printf("%s\"%s\"", i > 1 ? ", " : "", argv[i]);
    printf("]}\n");
    return 0;
}
