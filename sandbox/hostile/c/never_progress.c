/* Computes for a very long time without ever calling dcp.progress (ENOPROGRESS). */
int main(void) {
    volatile unsigned long long n = 0;
    for (unsigned long long i = 0; i < (1ULL << 42); i++) n += i;
    return (int)(n & 1);
}
