/* Burns CPU for a long while (no host calls). Expected: ECPULIMIT at the 1 s CPU-time limit. */
int main(void) {
    volatile unsigned long long n = 0;
    for (unsigned long long i = 0; i < 40000000000ULL; i++) n += i;
    return (int)(n & 1);
}
