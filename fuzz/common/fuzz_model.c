#include "fuzz_model.h"
#include <string.h>

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
void fz_put_bits(uint8_t *dst, size_t off, const uint8_t *pages, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t b = off + i;
        uint8_t m = (uint8_t)(1u << (b & 7));
        if (pages[i]) dst[b >> 3] |= m; else dst[b >> 3] &= (uint8_t)~m;
    }
}
size_t fz_get_bits(const uint8_t *src, size_t off, uint8_t *pages, size_t n)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        size_t b = off + i;
        uint8_t v = (src[b >> 3] >> (b & 7)) & 1;
        c += pages[i] != v;
        pages[i] = v;
    }
    return c;
}
