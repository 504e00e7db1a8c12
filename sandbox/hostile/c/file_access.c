/* The datum is a JSON string: the host path of a canary file. Tries to read it and print its
 * text as the result. Under the wasi worktime the open must fail inside the guest: no host path
 * is reachable except the scratch dir (/tmp) and the job files (/job). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

int main(void) {
    char path[4096] = {0};
    size_t n = fread(path, 1, sizeof path - 1, stdin);
    path[n] = 0;
    char *start = strchr(path, '"'), *end = start ? strrchr(start + 1, '"') : 0;
    if (!start || !end) { fprintf(stderr, "expected a JSON string path on stdin\n"); return 2; }
    *end = 0;
    FILE *f = fopen(start + 1, "r");
    if (!f) { fprintf(stderr, "cannot open %s: %s\n", start + 1, strerror(errno)); return 1; }
    char text[4096] = {0};
    size_t got = fread(text, 1, sizeof text - 1, f);
    putchar('"');
    for (size_t i = 0; i < got; i++) {
        if (text[i] == '"' || text[i] == '\\') putchar('\\');
        if (text[i] == '\n') { fputs("\\n", stdout); continue; }
        putchar(text[i]);
    }
    putchar('"');
    return 0;
}
