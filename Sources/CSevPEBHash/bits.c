#include "sevpeb_hash.h"

#include <string.h>

/*
 * The copy-out's unaligned word loop (sevpeb_get_bitmap at a GFN that is not
 * a multiple of 64 from its chunk). In C so that the compiler vectorises it
 * (two words per SSE2 shift pair on baseline x86-64); the Swift loop it
 * replaces became one SHRD per word, which this CPU retires at a third of
 * the rate.
 */
void spb_copy_shifted(void *restrict dst, const uint64_t *restrict src, size_t words, unsigned sh)
{
    unsigned char *out = dst;
    for (size_t k = 0; k < words; k++) {
        uint64_t v = (src[k] >> sh) | (src[k + 1] << (64 - sh));
        memcpy(out + 8 * k, &v, 8);   /* dst is the caller's byte buffer: no alignment, no type */
    }
}
