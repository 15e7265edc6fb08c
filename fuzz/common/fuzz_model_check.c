/* Self-check of the model's bit loops (fuzz_model.c) against one-bit-at-a-
 * time versions, on random buffers, offsets and lengths (every alignment,
 * short and long). fuzz/build.sh runs it before it builds a target: a wrong
 * oracle would pass wrong code or fail right code. Exit 1 on the first
 * mismatch, naming the function and its arguments. */
#include "fuzz_model.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BYTES = 600, MAXBIT = 4000 };
static int bit(const uint8_t *p, size_t i) { return (p[i >> 3] >> (i & 7)) & 1; }
static void put(uint8_t *p, size_t i, int v)
{
    if (v) p[i >> 3] |= (uint8_t)(1u << (i & 7)); else p[i >> 3] &= (uint8_t)~(1u << (i & 7));
}

int main(void)
{
    uint8_t a[BYTES], b[BYTES], c[BYTES];
    srand(1);
    for (int it = 0; it < 200000; it++) {
        for (int i = 0; i < BYTES; i++) { a[i] = (uint8_t)rand(); b[i] = (uint8_t)rand(); }
        if (it & 1) memset(a + rand() % 300, rand() & 1 ? 0xff : 0, 200);   /* long runs too */
        memcpy(c, b, BYTES);
        size_t off = (size_t)rand() % 2000, soff = (size_t)rand() % 2000;
        size_t n = rand() % 3 ? (size_t)rand() % 2000 : (size_t)rand() % 70;
        int v = rand() & 1;
        size_t want = 0;
        switch (it % 5) {
        case 0:
            for (size_t i = 0; i < n; i++) want += bit(a, off + i) == v;
            if (fz_count(a, off, n, v) != want) { printf("fz_count(off %zu, n %zu, v %d)\n", off, n, v); return 1; }
            break;
        case 1:
            for (size_t i = 0; i < n; i++) { want += bit(c, off + i) != v; put(c, off + i, v); }
            if (fz_fill(b, off, n, v) != want || memcmp(b, c, BYTES)) { printf("fz_fill(off %zu, n %zu, v %d)\n", off, n, v); return 1; }
            break;
        case 2:
            want = off + n;
            for (size_t i = off; i < off + n; i++) if (bit(a, i) == v) { want = i; break; }
            if (fz_find(a, off, off + n, v) != want) { printf("fz_find(from %zu, end %zu, v %d)\n", off, off + n, v); return 1; }
            break;
        case 3:
            for (size_t i = 0; i < n; i++) put(c, off + i, bit(a, soff + i));
            fz_copy(b, off, a, soff, n);
            if (memcmp(b, c, BYTES)) { printf("fz_copy(doff %zu, soff %zu, n %zu)\n", off, soff, n); return 1; }
            break;
        case 4:
            memcpy(b, a, BYTES);
            if (n && rand() & 1) put(b, (size_t)rand() % n, rand() & 1);
            want = n;
            for (size_t i = 0; i < n; i++) if (bit(a, i) != bit(b, i)) { want = i; break; }
            if (fz_diff(a, b, n) != want) { printf("fz_diff(n %zu)\n", n); return 1; }
            break;
        }
    }
    return 0;
}
