/*
 * XXH3 (64-bit, seed 0) for the wire format's checksums and the state
 * digest (docs/FORMAT.md). The implementation is Debian's libxxhash-dev
 * header compiled inline into hash.c (XXH_INLINE_ALL), so the archive
 * carries its own copy and needs nothing but libc. Internal to the library:
 * nothing here is part of the public ABI (include/sevpeb.h); the Makefile
 * makes these symbols local.
 */
#ifndef SEVPEB_HASH_H
#define SEVPEB_HASH_H

#include <stddef.h>
#include <stdint.h>

/*
 * A streaming XXH3 state, opaque. XXH3_state_t wants 64-byte alignment,
 * which a Swift value cannot promise (it may be moved), so the state lives
 * at the first 64-byte boundary inside `raw` and is moved there again when
 * the value was copied to an address of another alignment.
 */
typedef struct spbhash_state {
    uint64_t raw[80 + 8];
    uint32_t off;            /* byte offset of the state in raw */
} spbhash_state;

/* Start a new hash (XXH3_64bits_reset). */
void spbhash_reset(spbhash_state *s);
/* Feed n bytes (XXH3_64bits_update). */
void spbhash_update(spbhash_state *s, const void *p, size_t n);
/* Feed one 64-bit value as its 8 little-endian bytes. */
void spbhash_update_le64(spbhash_state *s, uint64_t v);
/* The hash of everything fed so far; the state stays usable. */
uint64_t spbhash_digest(spbhash_state *s);
/* One-shot XXH3_64bits of n bytes. */
uint64_t spbhash_bytes(const void *p, size_t n);

/*
 * dst[k] = src[k] >> sh | src[k + 1] << (64 - sh) for k < words, 0 < sh < 64
 * (reads words + 1 source words), stored as host-order words into the bytes
 * at dst (any alignment); dst and src do not overlap. The caller uses it on
 * little-endian hosts only (bits.c).
 */
void spb_copy_shifted(void *restrict dst, const uint64_t *restrict src, size_t words, unsigned sh);

/*
 * Prefetch n bytes at p for reading: a hint that changes no result. The
 * encoder asks for the next chunk's 2 KiB block while it writes the current
 * one (blocks are separate allocations, so the hardware's stream prefetcher
 * loses the trail at each one).
 */
static inline void spb_prefetch(const void *p, size_t n)
{
    for (size_t i = 0; i < n; i += 64) {
        __builtin_prefetch((const char *)p + i, 0, 3);
    }
}

#endif
