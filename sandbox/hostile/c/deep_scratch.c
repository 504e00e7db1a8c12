// A scratch tree 1500 directories deep (deeper than Python's recursion limit), made by slice 0
// only: the cleanup after it must not fail this slice, the job's other slices or later jobs.
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void) {
    int x = 0;
    if (scanf("%d", &x) != 1) return 2;
    if (x == 0) {
        if (chdir("/tmp") != 0) return 3;
        for (int i = 0; i < 1500; i++) {
            if (mkdir("d", 0700) != 0 || chdir("d") != 0) break;
        }
    }
    printf("%d\n", x * 10);
    return 0;
}
