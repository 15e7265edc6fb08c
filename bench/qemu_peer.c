/*
 * bench/qemu_peer.c - thin wrappers that expose QEMU's bitmap code (the
 * inline parts of include/qemu/bitmap.h; util/bitmap.c and util/bitops.c are
 * compiled next to this file from the QEMU source at bench time) to the
 * harness under plain names. Built with gcc -O2 and QEMU's include paths.
 */
#include "qemu/osdep.h"
#include "qemu/bitops.h"
#include "qemu/bitmap.h"
#include "qemu_peer.h"

void peer_set(unsigned long *map, long start, long nr) { bitmap_set(map, start, nr); }
void peer_set_atomic(unsigned long *map, long start, long nr) { bitmap_set_atomic(map, start, nr); }
void peer_clear(unsigned long *map, long start, long nr) { bitmap_clear(map, start, nr); }
/* The thread-safe clear: clear_bit_atomic for one bit, QEMU's only
 * atomic range clear (bitmap_test_and_clear_atomic) for a range. */
void peer_clear_atomic(unsigned long *map, long start, long nr)
{
    if (nr == 1) {
        clear_bit_atomic(start, map);
    } else {
        bitmap_test_and_clear_atomic(map, start, nr);
    }
}
long peer_count_one(const unsigned long *map, long offset, long nbits)
{
    return bitmap_count_one_with_offset(map, offset, nbits);
}
unsigned long peer_find_next_bit(const unsigned long *map, unsigned long size, unsigned long off)
{
    return find_next_bit(map, size, off);
}
unsigned long peer_find_next_zero_bit(const unsigned long *map, unsigned long size, unsigned long off)
{
    return find_next_zero_bit(map, size, off);
}
void peer_copy_with_src_offset(unsigned long *dst, const unsigned long *src,
                               unsigned long shift, unsigned long nbits)
{
    bitmap_copy_with_src_offset(dst, src, shift, nbits);
}

/* The RAM saver's own per-page bitmap test: test_bit (inline) over n pages. */
unsigned long peer_walk_test_bit(const unsigned long *map, unsigned long start, unsigned long n)
{
    unsigned long sum = 0;

    for (unsigned long i = 0; i < n; i++) {
        sum += test_bit(start + i, map);
    }
    return sum;
}
