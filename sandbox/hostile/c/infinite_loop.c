/* Spins forever without calling into the host: only the epoch interrupt can stop it. */
int main(void) {
    volatile unsigned long long n = 0;
    for (;;) n++;
}
