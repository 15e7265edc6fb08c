/*
 * testchan.h - the in-memory migration channel of the C tests: a
 * sevpeb_write_fn / sevpeb_read_fn pair over one growable buffer, with
 * optional injected failures. A zero-initialised testchan never fails.
 */
#ifndef SEVPEB_TESTCHAN_H
#define SEVPEB_TESTCHAN_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct testchan {
    uint8_t *data;
    size_t len, cap, off;
    int fail;        /* inject a failure at fail_at (0: never) */
    size_t fail_at;  /* write: once len would pass it; read: at this offset */
    int err;         /* errno the injected failure returns (0: EIO) */
} testchan;

static inline int testchan_error(const testchan *c) { return -(c->err ? c->err : EIO); }

static inline int testchan_write(void *opaque, const uint8_t *p, size_t n)
{
    testchan *c = opaque;
    if (c->fail && c->len + n > c->fail_at) {
        return testchan_error(c);
    }
    if (c->len + n > c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 4096;
        while (nc < c->len + n) {
            nc *= 2;
        }
        uint8_t *d = realloc(c->data, nc);
        if (!d) {
            return -ENOMEM;
        }
        c->data = d;
        c->cap = nc;
    }
    memcpy(c->data + c->len, p, n);
    c->len += n;
    return 0;
}

/* Short reads are the end of the stream: -ENODATA, as QEMU's thunk returns. */
static inline int testchan_read(void *opaque, uint8_t *p, size_t n)
{
    testchan *c = opaque;
    if (c->fail && c->off + n > c->fail_at) {
        return testchan_error(c);
    }
    if (c->len - c->off < n) {
        return -ENODATA;
    }
    memcpy(p, c->data + c->off, n);
    c->off += n;
    return 0;
}

static inline void testchan_free(testchan *c)
{
    free(c->data);
    memset(c, 0, sizeof(*c));
}

#endif /* SEVPEB_TESTCHAN_H */
