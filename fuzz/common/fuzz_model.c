#include "fuzz_model.h"
#include <string.h>

/* Built -O2 without sanitizers or coverage (fuzz/build.sh): the loops are
 * written so that the compiler vectorizes them (8 pages per packed byte). */

size_t fz_set(uint8_t *p, size_t n, uint8_t v)
{
    size_t c = n - fz_count(p, n, v);
    memset(p, v, n);
    return c;
}
size_t fz_count(const uint8_t *p, size_t n, uint8_t v)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) c += p[i] == v;
    return c;
}
size_t fz_find(const uint8_t *p, size_t n, uint8_t v)
{
    const void *q = memchr(p, v, n);
    return q ? (size_t)((const uint8_t *)q - p) : n;
}
/* Eight pages (bytes, nonzero = 1) as one packed byte, LSB first. */
static inline uint8_t pack8(const uint8_t *p)
{
    uint8_t b = 0;
    for (int k = 0; k < 8; k++) b |= (uint8_t)((p[k] != 0) << k);
    return b;
}
void fz_put_bits(uint8_t *dst, size_t off, const uint8_t *pages, size_t n)
{
    size_t i = 0;
    /* head up to a byte boundary of dst, then whole bytes, then the tail */
    for (; i < n && ((off + i) & 7); i++) {
        size_t b = off + i;
        uint8_t m = (uint8_t)(1u << (b & 7));
        if (pages[i]) dst[b >> 3] |= m; else dst[b >> 3] &= (uint8_t)~m;
    }
    uint8_t *d = dst + ((off + i) >> 3);
    for (; i + 8 <= n; i += 8) *d++ = pack8(pages + i);
    for (; i < n; i++) {
        size_t b = off + i;
        uint8_t m = (uint8_t)(1u << (b & 7));
        if (pages[i]) dst[b >> 3] |= m; else dst[b >> 3] &= (uint8_t)~m;
    }
}
size_t fz_get_bits(const uint8_t *src, size_t off, uint8_t *pages, size_t n)
{
    size_t c = 0, i = 0;
    for (; i < n && ((off + i) & 7); i++) {
        size_t b = off + i;
        uint8_t v = (src[b >> 3] >> (b & 7)) & 1;
        c += pages[i] != v;
        pages[i] = v;
    }
    const uint8_t *s = src + ((off + i) >> 3);
    for (; i + 8 <= n; i += 8, s++) {
        uint8_t sb = *s;
        if (pack8(pages + i) == sb) {
            /* the common case: nothing changes (still normalize to 0/1) */
            for (int k = 0; k < 8; k++) pages[i + k] = (sb >> k) & 1;
            continue;
        }
        for (int k = 0; k < 8; k++) {
            uint8_t v = (sb >> k) & 1;
            c += pages[i + k] != v;
            pages[i + k] = v;
        }
    }
    for (; i < n; i++) {
        size_t b = off + i;
        uint8_t v = (src[b >> 3] >> (b & 7)) & 1;
        c += pages[i] != v;
        pages[i] = v;
    }
    return c;
}
size_t fz_cmp_bits(const uint8_t *packed, const uint8_t *pages, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        if (packed[i >> 3] != pack8(pages + i)) break;
    }
    for (; i < n; i++) {
        if (((packed[i >> 3] >> (i & 7)) & 1) != (pages[i] != 0)) return i;
    }
    return n;
}
