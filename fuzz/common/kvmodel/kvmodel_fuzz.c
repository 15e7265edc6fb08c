/* The seed fuzz target's bulk comparison against the kernel model (C, -O2,
 * no coverage: it is the oracle, like fuzz_model.c). */
#include "kvmodel.h"

int64_t kvmodel_diff(int fd, uint64_t gfn, uint64_t npages, const uint8_t *bits)
{
    for (uint64_t i = 0; i < npages; i++) {
        int want = bits ? (bits[i >> 3] >> (i & 7)) & 1 : 1;
        if (kvmodel_bit(fd, gfn + i) != want) {
            return (int64_t)i;
        }
    }
    return -1;
}
