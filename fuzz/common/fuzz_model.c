#include "fuzz_model.h"
#include <string.h>

/* Built -O2 without sanitizers or coverage (fuzz/build.sh). Whole bytes go
 * through memset / memcmp / memcpy and a popcount per 64-bit word; only the
 * partial bytes at either end are handled bit by bit. */

static inline int bit(const uint8_t *p, size_t i) { return (p[i >> 3] >> (i & 7)) & 1; }
static inline void put(uint8_t *p, size_t i, int v)
{
    uint8_t m = (uint8_t)(1u << (i & 7));
    if (v) p[i >> 3] |= m; else p[i >> 3] &= (uint8_t)~m;
}

size_t fz_count(const uint8_t *p, size_t off, size_t n, int v)
{
    size_t ones = 0, i = off, e = off + n;
    for (; i < e && (i & 7); i++) ones += bit(p, i);
    const uint8_t *q = p + (i >> 3);
    size_t bytes = (e - i) >> 3;
    size_t k = 0;
    for (; k + 8 <= bytes; k += 8) {
        uint64_t w;
        memcpy(&w, q + k, 8);
        ones += (size_t)__builtin_popcountll(w);
    }
    for (; k < bytes; k++) ones += (size_t)__builtin_popcount(q[k]);
    for (i += bytes << 3; i < e; i++) ones += bit(p, i);
    return v ? ones : n - ones;
}

size_t fz_fill(uint8_t *p, size_t off, size_t n, int v)
{
    size_t changed = n - fz_count(p, off, n, v);
    size_t i = off, e = off + n;
    for (; i < e && (i & 7); i++) put(p, i, v);
    size_t bytes = (e - i) >> 3;
    memset(p + (i >> 3), v ? 0xff : 0, bytes);
    for (i += bytes << 3; i < e; i++) put(p, i, v);
    return changed;
}

size_t fz_find(const uint8_t *p, size_t from, size_t end, int v)
{
    size_t i = from;
    for (; i < end && (i & 63); i++) if (bit(p, i) == v) return i;
    for (; i + 64 <= end; i += 64) {
        uint64_t w;
        memcpy(&w, p + (i >> 3), 8);
        if (!v) w = ~w;
        if (w) return i + (size_t)__builtin_ctzll(w);
    }
    for (; i < end; i++) if (bit(p, i) == v) return i;
    return end;
}

void fz_copy(uint8_t *dst, size_t doff, const uint8_t *src, size_t soff, size_t n)
{
    size_t k = 0;
    if (((doff ^ soff) & 7) == 0) {
        /* same position in the byte: bits up to a byte boundary, then memcpy */
        for (; k < n && ((doff + k) & 7); k++) put(dst, doff + k, bit(src, soff + k));
        size_t bytes = (n - k) >> 3;
        memcpy(dst + ((doff + k) >> 3), src + ((soff + k) >> 3), bytes);
        k += bytes << 3;
    } else {
        /* shifted: whole destination bytes from two source bytes each */
        for (; k < n && ((doff + k) & 7); k++) put(dst, doff + k, bit(src, soff + k));
        unsigned sh = (unsigned)((soff + k) & 7);      /* nonzero here */
        for (; k + 8 <= n; k += 8) {
            size_t sb = (soff + k) >> 3;
            /* bit 7 of this byte is source bit sh + 7 >= 8: byte sb + 1 is in the copy */
            dst[(doff + k) >> 3] = (uint8_t)((src[sb] >> sh) | (src[sb + 1] << (8 - sh)));
        }
    }
    for (; k < n; k++) put(dst, doff + k, bit(src, soff + k));
}

size_t fz_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t bytes = n >> 3, i = 0;
    if (memcmp(a, b, bytes) != 0) {
        for (; i < bytes && a[i] == b[i]; i++) {}
    } else {
        i = bytes;
    }
    for (size_t k = i << 3; k < n; k++) if (bit(a, k) != bit(b, k)) return k;
    return n;
}
