/* Byte-per-page loops of the fuzzers' reference model (fuzz/common/Model.swift),
 * compiled without coverage instrumentation: the model is the oracle, not the
 * code under test, and instrumented per-page loops made the targets 50x slower. */
#ifndef FUZZ_MODEL_H
#define FUZZ_MODEL_H
#include <stddef.h>
#include <stdint.h>

/* Set p[0..n) to v; returns how many bytes changed. */
size_t fz_set(uint8_t *p, size_t n, uint8_t v);
/* Number of bytes in p[0..n) equal to v. */
size_t fz_count(const uint8_t *p, size_t n, uint8_t v);
/* Index of the first byte equal to v in p[0..n), or n. */
size_t fz_find(const uint8_t *p, size_t n, uint8_t v);
/* Write pages[0..n) as bits at bit offset off of dst (LSB first). */
void fz_put_bits(uint8_t *dst, size_t off, const uint8_t *pages, size_t n);
/* Read n bits at bit offset off of src into pages[0..n); returns changes. */
size_t fz_get_bits(const uint8_t *src, size_t off, uint8_t *pages, size_t n);
/* Index of the first page of pages[0..n) (nonzero = 1) that differs from
 * bit i of packed (LSB first), or n. */
size_t fz_cmp_bits(const uint8_t *packed, const uint8_t *pages, size_t n);
#endif
