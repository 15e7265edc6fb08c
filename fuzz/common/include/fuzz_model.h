/* Bit loops of the fuzzers' reference model (fuzz/common/Model.swift): one
 * bit per page, LSB first (1 = private), the layout of the wire and of
 * sevpeb_get_bitmap. Compiled without coverage instrumentation or ASan: the
 * model is the oracle, not the code under test (instrumented per-page loops
 * made the targets 50x slower; a byte per page made the model's memsets
 * and page faults half of a target's time). Every offset and count is in
 * bits; callers pass buffers that hold them. */
#ifndef FUZZ_MODEL_H
#define FUZZ_MODEL_H
#include <stddef.h>
#include <stdint.h>

/* Set bits [off, off+n) of p to v (0 or 1); returns how many changed. */
size_t fz_fill(uint8_t *p, size_t off, size_t n, int v);
/* Number of bits in [off, off+n) of p equal to v. */
size_t fz_count(const uint8_t *p, size_t off, size_t n, int v);
/* Index of the first bit equal to v in [from, end) of p, or end. */
size_t fz_find(const uint8_t *p, size_t from, size_t end, int v);
/* Copy n bits from bit soff of src to bit doff of dst (other bits of dst kept). */
void fz_copy(uint8_t *dst, size_t doff, const uint8_t *src, size_t soff, size_t n);
/* Index of the first bit of [0, n) where a and b differ, or n. */
size_t fz_diff(const uint8_t *a, const uint8_t *b, size_t n);
#endif
