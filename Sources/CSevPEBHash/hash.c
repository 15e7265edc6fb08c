#include "sevpeb_hash.h"

#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

_Static_assert(sizeof(XXH3_state_t) + 64 <= sizeof(((spbhash_state *)0)->raw),
               "spbhash_state too small for this xxhash.h");

/* The state at the 64-byte boundary inside raw, moved there if needed. */
static XXH3_state_t *at(spbhash_state *s)
{
    unsigned char *raw = (unsigned char *)s->raw;
    uint32_t off = (uint32_t)(-(uintptr_t)raw & 63);
    if (off != s->off) {
        memmove(raw + off, raw + s->off, sizeof(XXH3_state_t));
        s->off = off;
    }
    return (XXH3_state_t *)(void *)(raw + off);
}

void spbhash_reset(spbhash_state *s)
{
    s->off = (uint32_t)(-(uintptr_t)s->raw & 63);
    XXH3_64bits_reset(at(s));
}

void spbhash_update(spbhash_state *s, const void *p, size_t n)
{
    XXH3_64bits_update(at(s), p, n);
}

void spbhash_update_le64(spbhash_state *s, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(v >> (8 * i));
    }
    XXH3_64bits_update(at(s), b, 8);
}

uint64_t spbhash_digest(spbhash_state *s)
{
    return XXH3_64bits_digest(at(s));
}

uint64_t spbhash_bytes(const void *p, size_t n)
{
    return XXH3_64bits(p, n);
}
