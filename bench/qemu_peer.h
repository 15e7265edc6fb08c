/* bench/qemu_peer.h - QEMU's bitmap code under plain names (see qemu_peer.c). */
#ifndef BENCH_QEMU_PEER_H
#define BENCH_QEMU_PEER_H
void peer_set(unsigned long *map, long start, long nr);
void peer_set_atomic(unsigned long *map, long start, long nr);
void peer_clear(unsigned long *map, long start, long nr);
void peer_clear_atomic(unsigned long *map, long start, long nr);
long peer_count_one(const unsigned long *map, long offset, long nbits);
unsigned long peer_find_next_bit(const unsigned long *map, unsigned long size, unsigned long off);
unsigned long peer_find_next_zero_bit(const unsigned long *map, unsigned long size, unsigned long off);
void peer_copy_with_src_offset(unsigned long *dst, const unsigned long *src,
                               unsigned long shift, unsigned long nbits);
unsigned long peer_walk_test_bit(const unsigned long *map, unsigned long start, unsigned long n);
#endif
