/* Uses the optional dcp host imports: progress, console lines with a level, and an event. */
#include <stdio.h>
#include <string.h>

__attribute__((import_module("dcp"), import_name("progress"))) void dcp_progress(double value);
__attribute__((import_module("dcp"), import_name("console"))) void dcp_console(int level, const char *text, int len);
__attribute__((import_module("dcp"), import_name("emit"))) void dcp_emit(const char *name, int name_len,
                                                                       const char *json, int json_len);

static void console(int level, const char *text) { dcp_console(level, text, (int)strlen(text)); }

int main(void) {
    console(3, "a warning from C");
    dcp_progress(0.5);
    dcp_emit("partial", 7, "{\"rows\": 10}", 12);
    dcp_progress(1.0);
    printf("\"done\"\n");
    return 0;
}
