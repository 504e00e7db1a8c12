/* Reads the job file /job/input.txt, then checks the scratch dir /tmp is fresh: reports whether a
 * marker left by an earlier slice exists, and leaves one behind. */
#include <stdio.h>
#include <string.h>

int main(void) {
    char text[256] = {0};
    FILE *f = fopen("/job/input.txt", "r");
    if (!f) { fprintf(stderr, "cannot read /job/input.txt\n"); return 1; }
    fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[strcspn(text, "\n\"\\")] = 0;
    FILE *m = fopen("/tmp/marker", "r");
    int existed = m != NULL;
    if (m) fclose(m);
    m = fopen("/tmp/marker", "w");
    int wrote = m != NULL && fputs("x", m) >= 0;
    if (m) fclose(m);
    FILE *j = fopen("/job/input.txt", "w");
    int job_writable = j != NULL;
    if (j) fclose(j);
    printf("{\"input\": \"%s\", \"marker_existed\": %s, \"scratch_writable\": %s, \"job_writable\": %s}\n",
           text, existed ? "true" : "false", wrote ? "true" : "false", job_writable ? "true" : "false");
    return 0;
}
