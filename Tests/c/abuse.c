/*
 * The C ABI under ASan + LSan + UBSan (issue 7): create/destroy cycles, every
 * error path of every function, and migration callbacks that fail part-way:
 * a writer failing at every byte offset of START / PART / END, a reader
 * returning a short read (-ENODATA) or an error at every offset, every
 * truncation and every single-byte corruption of a small stream. Each must
 * give a clean negative errno, a last-error text, no leak, the source state
 * unchanged, the destination state unchanged, and a later migration that
 * works. Built by Tests/c/stress.sh against the installed archive with
 * -fsanitize=address,undefined. Prints "N passed, N failed".
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sevpeb.h"
#include "testcheck.h"
#include "testchan.h"


/* A failing error path must leave a message naming what was wrong. */
#define ERR(expr, want)                                                         \
    do {                                                                        \
        long long r_ = (long long)(expr);                                       \
        CHECK(r_ == (want), "%s = %lld, want %lld", #expr, r_, (long long)(want)); \
        CHECK(sevpeb_last_error() && sevpeb_last_error()[0], "%s: no message", #expr); \
    } while (0)


/* State fingerprint: digest, totals, control, and the bitmap of every slot. */
typedef struct { uint64_t digest, pages, shared, control; uint8_t *bits; size_t nbits; int slots; } fp_t;
static fp_t fingerprint(sevpeb_tracker *t)
{
    fp_t f = {0};
    sevpeb_digest(t, &f.digest);
    sevpeb_totals(t, &f.pages, &f.shared);
    f.control = sevpeb_get_migration_control(t);
    f.slots = sevpeb_slot_count(t);
    f.nbits = (size_t)(f.pages + 8 * (uint64_t)f.slots) / 8 + 1;
    f.bits = calloc(1, f.nbits);
    size_t at = 0;
    for (int i = 0; i < f.slots; i++) {
        uint64_t b, n;
        sevpeb_slot_get(t, (uint32_t)i, &b, &n);
        sevpeb_get_bitmap(t, b, n, f.bits + at, f.nbits - at);
        at += (n + 7) / 8;
    }
    return f;
}
static int fp_equal(fp_t a, fp_t b)
{
    return a.digest == b.digest && a.pages == b.pages && a.shared == b.shared && a.control == b.control &&
           a.slots == b.slots && a.nbits == b.nbits && memcmp(a.bits, b.bits, a.nbits) == 0;
}

static sevpeb_tracker *make(int shared_pattern)
{
    sevpeb_tracker *t = NULL;
    sevpeb_tracker_create(0, &t);
    sevpeb_slot_add(t, 0, 3 * 16384 + 77);
    sevpeb_slot_add(t, 3 * 16384 + 77, 5000);
    sevpeb_slot_add(t, 1ull << 30, 20000);
    if (shared_pattern) {
        uint8_t bits[256];
        for (int i = 0; i < 256; i++) bits[i] = (uint8_t)(i * 37 + shared_pattern);
        sevpeb_set_bitmap(t, 100, 2048, bits, sizeof bits);
        sevpeb_set_range(t, 16384 * 2 + 5, 9000, SEVPEB_SHARED);
        sevpeb_set_range(t, (1ull << 30) + 3, 17, SEVPEB_SHARED);
        sevpeb_set_migration_control(t, 1);
    }
    return t;
}

/* A whole migration src -> dst through clean channels: 1 if committed. */
static int migrate(sevpeb_tracker *src, sevpeb_tracker *dst)
{
    testchan a = { 0 }, b = { 0 }, c = { 0 };
    int ok = sevpeb_save_setup(src, testchan_write, &a) == 0;
    sevpeb_set_range(src, 10, 3, SEVPEB_SHARED);
    ok = ok && sevpeb_save_iterate(src, testchan_write, &b, 0) >= 0;
    ok = ok && sevpeb_save_complete(src, testchan_write, &c) == 0;
    sevpeb_save_cleanup(src);
    sevpeb_load_setup(dst);
    ok = ok && sevpeb_load_state(dst, testchan_read, &a, 1) == 0;
    ok = ok && sevpeb_load_state(dst, testchan_read, &b, 1) == 0;
    ok = ok && sevpeb_load_state(dst, testchan_read, &c, 1) == 1;
    sevpeb_load_cleanup(dst);
    free(a.data); free(b.data); free(c.data);
    return ok;
}

static void test_create_destroy(void)
{
    for (int i = 0; i < 300; i++) {
        sevpeb_tracker *t = make(i % 7 + 1);
        testchan a = { 0 };
        if (i % 3 == 0) sevpeb_save_setup(t, testchan_write, &a);   /* destroyed with a save active */
        if (i % 5 == 0) {                                      /* ... or a load with staging */
            sevpeb_load_setup(t);
            testchan r = { 0 };
            sevpeb_tracker *s = make(1);
            sevpeb_save_setup(s, testchan_write, &r);
            sevpeb_load_state(t, testchan_read, &r, 1);
            sevpeb_tracker_destroy(s);
            free(r.data);
        }
        sevpeb_tracker_destroy(t);
        free(a.data);
    }
    sevpeb_tracker_destroy(NULL);
    passed++;
}

static void test_error_paths(void)
{
    uint64_t u = 0, v = 0;
    uint8_t buf[64] = {0};
    sevpeb_tracker *t = NULL;
    ERR(sevpeb_tracker_create(1, &t), -EINVAL);
    ERR(sevpeb_tracker_create(0, NULL), -EINVAL);
    /* NULL handle everywhere. */
    ERR(sevpeb_slot_add(NULL, 0, 1), -EINVAL);
    ERR(sevpeb_slot_remove(NULL, 0), -EINVAL);
    ERR(sevpeb_slot_resize(NULL, 0, 1), -EINVAL);
    ERR(sevpeb_slot_count(NULL), -EINVAL);
    ERR(sevpeb_slot_get(NULL, 0, &u, &v), -EINVAL);
    ERR(sevpeb_set_range(NULL, 0, 1, 0), -EINVAL);
    ERR(sevpeb_test(NULL, 0), -EINVAL);
    ERR(sevpeb_count_shared(NULL, 0, 1), -EINVAL);
    ERR(sevpeb_totals(NULL, &u, &v), -EINVAL);
    ERR(sevpeb_next_shared_run(NULL, 0, &u, &v), -EINVAL);
    ERR(sevpeb_get_bitmap(NULL, 0, 1, buf, 1), -EINVAL);
    ERR(sevpeb_set_bitmap(NULL, 0, 1, buf, 1), -EINVAL);
    ERR(sevpeb_reset(NULL), -EINVAL);
    ERR(sevpeb_digest(NULL, &u), -EINVAL);
    ERR(sevpeb_set_change_callback(NULL, NULL, NULL), -EINVAL);
    ERR(sevpeb_map_gpa_range(NULL, 0, 1, 0x10), -SEVPEB_KVM_EINVAL);
    ERR(sevpeb_set_migration_control(NULL, 1), -EINVAL);
    ERR(sevpeb_set_require_ready(NULL, 1), -EINVAL);
    ERR(sevpeb_may_migrate(NULL), -EINVAL);
    ERR(sevpeb_save_setup(NULL, testchan_write, NULL), -EINVAL);
    ERR(sevpeb_save_iterate(NULL, testchan_write, NULL, 0), -EINVAL);
    ERR(sevpeb_save_complete(NULL, testchan_write, NULL), -EINVAL);
    ERR(sevpeb_save_get_stats(NULL, NULL), -EINVAL);
    ERR(sevpeb_load_setup(NULL), -EINVAL);
    ERR(sevpeb_load_state(NULL, testchan_read, NULL, 1), -EINVAL);
    ERR(sevpeb_count_differences(NULL, NULL, 0, 1, &u, NULL, 0), -EINVAL);
    CHECK(sevpeb_memory_bytes(NULL) == 0 && sevpeb_save_pending(NULL) == 0 && sevpeb_get_migration_control(NULL) == 0, "NULL getters");
    sevpeb_save_cleanup(NULL);
    sevpeb_load_cleanup(NULL);

    t = make(3);
    fp_t before = fingerprint(t);
    /* NULL out-pointers and callbacks. */
    ERR(sevpeb_slot_get(t, 0, NULL, &v), -EINVAL);
    ERR(sevpeb_totals(t, NULL, &v), -EINVAL);
    ERR(sevpeb_next_shared_run(t, 0, &u, NULL), -EINVAL);
    ERR(sevpeb_get_bitmap(t, 0, 1, NULL, 1), -EINVAL);
    ERR(sevpeb_digest(t, NULL), -EINVAL);
    ERR(sevpeb_save_setup(t, NULL, NULL), -EINVAL);
    ERR(sevpeb_load_state(t, NULL, NULL, 1), -EINVAL);
    ERR(sevpeb_save_get_stats(t, NULL), -EINVAL);
    ERR(sevpeb_count_differences(t, NULL, 0, 1, &u, NULL, 0), -EINVAL);
    ERR(sevpeb_count_differences(t, t, 0, 1, NULL, NULL, 0), -EINVAL);
    ERR(sevpeb_count_differences(t, t, 0, 1, &u, NULL, 5), -EINVAL);
    ERR(sevpeb_count_differences(t, t, 0, 1, &u, &v, SIZE_MAX), -EINVAL);
    ERR(sevpeb_count_differences(t, t, 0, 0, &u, NULL, 0), -EINVAL);
    ERR(sevpeb_count_differences(t, t, UINT64_MAX, 2, &u, NULL, 0), -ERANGE);
    sevpeb_save_stats st = {.size = 4};
    ERR(sevpeb_save_get_stats(t, &st), -EINVAL);
    /* Layout errors. */
    ERR(sevpeb_slot_add(t, 5, 0), -EINVAL);
    ERR(sevpeb_slot_add(t, SEVPEB_GFN_LIMIT - 1, 2), -ERANGE);
    ERR(sevpeb_slot_add(t, UINT64_MAX, 2), -ERANGE);
    ERR(sevpeb_slot_add(t, 100, 10), -EEXIST);
    ERR(sevpeb_slot_remove(t, 1), -ENOENT);
    ERR(sevpeb_slot_resize(t, 1, 5), -ENOENT);
    ERR(sevpeb_slot_resize(t, 0, 0), -EINVAL);
    ERR(sevpeb_slot_resize(t, 0, 3 * 16384 + 78), -EEXIST);
    ERR(sevpeb_slot_resize(t, 1ull << 30, SEVPEB_GFN_LIMIT), -ERANGE);
    ERR(sevpeb_slot_get(t, 99, &u, &v), -ENOENT);
    /* Page-state errors. */
    ERR(sevpeb_set_range(t, 0, 0, 0), -EINVAL);
    ERR(sevpeb_set_range(t, 0, 1, 2), -EINVAL);
    ERR(sevpeb_set_range(t, 0, 3 * 16384 + 77 + 5000 + 1, 0), -ERANGE);   /* into the hole */
    ERR(sevpeb_set_range(t, UINT64_MAX, 2, 0), -ERANGE);
    ERR(sevpeb_set_range(t, 1ull << 29, 1, 0), -ERANGE);
    ERR(sevpeb_test(t, 1ull << 29), -ERANGE);
    ERR(sevpeb_count_shared(t, 0, 0), -EINVAL);
    ERR(sevpeb_count_shared(t, (1ull << 30) + 19999, 2), -ERANGE);
    ERR(sevpeb_get_bitmap(t, 0, 0, buf, sizeof buf), -EINVAL);
    ERR(sevpeb_get_bitmap(t, 0, 513, buf, sizeof buf), -ENOSPC);
    ERR(sevpeb_get_bitmap(t, 0, UINT64_MAX, buf, sizeof buf), -ENOSPC);
    ERR(sevpeb_set_bitmap(t, 0, 513, buf, sizeof buf), -ENOSPC);
    ERR(sevpeb_set_bitmap(t, 1ull << 29, 8, buf, sizeof buf), -ERANGE);
    ERR(sevpeb_map_gpa_range(t, 0x800, 1, 0x10), -SEVPEB_KVM_EINVAL);
    ERR(sevpeb_map_gpa_range(t, 0, 0, 0x10), -SEVPEB_KVM_EINVAL);
    ERR(sevpeb_map_gpa_range(t, 0, 1, 0x20), -SEVPEB_KVM_EINVAL);
    ERR(sevpeb_map_gpa_range(t, 0, 1, 0x3), -SEVPEB_KVM_EINVAL);
    ERR(sevpeb_map_gpa_range(t, 0xfffffffffffff000ull, 2, 0x10), -SEVPEB_KVM_EINVAL);
    ERR(sevpeb_map_gpa_range(t, (1ull << 29) << 12, 1, 0x10), -SEVPEB_KVM_EINVAL);
    ERR(sevpeb_set_migration_control(t, 2), -EINVAL);
    /* Session errors. */
    testchan c = { 0 };
    ERR(sevpeb_save_iterate(t, testchan_write, &c, 0), -EPROTO);
    ERR(sevpeb_save_complete(t, testchan_write, &c), -EPROTO);
    sevpeb_set_migration_control(t, 0);
    sevpeb_set_require_ready(t, 1);
    ERR(sevpeb_may_migrate(t), 0);
    ERR(sevpeb_save_setup(t, testchan_write, &c), -EAGAIN);
    sevpeb_set_require_ready(t, 0);
    sevpeb_set_migration_control(t, 1);
    CHECK(sevpeb_save_setup(t, testchan_write, &c) == 0, "setup");
    ERR(sevpeb_save_setup(t, testchan_write, &c), -EBUSY);
    sevpeb_save_cleanup(t);
    sevpeb_load_setup(t);
    c.off = 0;
    ERR(sevpeb_load_state(t, testchan_read, &c, 2), -EPROTONOSUPPORT);
    ERR(sevpeb_load_state(t, testchan_read, &c, 1), -EBADMSG);   /* poisoned until load_setup */
    sevpeb_load_cleanup(t);
    free(c.data);
    fp_t after = fingerprint(t);
    CHECK(fp_equal(before, after), "error paths changed the state");
    free(after.bits);
    for (int e = -200; e <= 200; e++) CHECK(sevpeb_strerror(e) != NULL, "strerror(%d)", e);
    free(before.bits);
    sevpeb_tracker_destroy(t);
}

/* Writer failing at every offset of START, PART and END. */
static void test_failing_writer(void)
{
    sevpeb_tracker *t = make(5);
    testchan full[3] = { { 0 } };
    sevpeb_save_setup(t, testchan_write, &full[0]);
    sevpeb_set_range(t, 20000, 40, SEVPEB_SHARED);
    sevpeb_save_iterate(t, testchan_write, &full[1], 0);
    sevpeb_set_range(t, 20000, 40, SEVPEB_PRIVATE);
    sevpeb_set_range(t, 30000, 4000, SEVPEB_SHARED);
    sevpeb_save_complete(t, testchan_write, &full[2]);
    sevpeb_save_cleanup(t);
    fp_t before = fingerprint(t);
    int cases = 0, errs = 0;
    for (int phase = 0; phase < 3; phase++) {
        size_t len = full[phase].len;
        size_t step = len > 400 ? len / 200 : 1;
        for (size_t at = 0; at < len; at += step) {
            testchan ok = { 0 }, bad = { 0 };
            bad.fail = 1;
            bad.fail_at = at;
            bad.err = (at & 1) ? EIO : EPIPE;
            int rc = 0;
            if (phase == 0) {
                rc = sevpeb_save_setup(t, testchan_write, &bad);
            } else {
                if (sevpeb_save_setup(t, testchan_write, &ok) != 0) failed++;
                /* Changes to send after START; undone after the failure. */
                sevpeb_set_range(t, 20000, 40, SEVPEB_SHARED);
                sevpeb_set_range(t, 30000, 4000, SEVPEB_PRIVATE);
                rc = phase == 1 ? sevpeb_save_iterate(t, testchan_write, &bad, 0) : sevpeb_save_complete(t, testchan_write, &bad);
                if (phase == 1 && rc == 1) rc = 0;
                sevpeb_set_range(t, 20000, 40, SEVPEB_PRIVATE);
                sevpeb_set_range(t, 30000, 4000, SEVPEB_SHARED);
            }
            sevpeb_save_cleanup(t);
            cases++;
            if (rc == -bad.err) errs++;
            else CHECK(rc == 0 && bad.len <= at, "phase %d fail at %zu: rc %d (%zu bytes written)", phase, at, rc, bad.len);
            free(ok.data);
            free(bad.data);
        }
    }
    CHECK(errs > 0, "writer errors seen %d of %d", errs, cases);
    fp_t after = fingerprint(t);
    CHECK(fp_equal(before, after), "failed saves changed the source state");
    /* A new migration after all those failures still works. */
    sevpeb_tracker *d = make(0);
    CHECK(migrate(t, d), "migration after failed saves");
    fp_t fs = fingerprint(t), fd = fingerprint(d);
    CHECK(fp_equal(fs, fd), "destination differs after failed saves");
    printf("abuse: writer failed at %d offsets of START/PART/END, %d clean errors, source unchanged\n", cases, errs);
    free(before.bits); free(after.bits); free(fs.bits); free(fd.bits);
    for (int i = 0; i < 3; i++) free(full[i].data);
    sevpeb_tracker_destroy(t);
    sevpeb_tracker_destroy(d);
}

/* Reader: short read / error at every offset; truncation; corruption. */
static void test_failing_reader(void)
{
    sevpeb_tracker *src = make(9);
    testchan s[3] = { { 0 } };
    sevpeb_save_setup(src, testchan_write, &s[0]);
    sevpeb_set_range(src, 7, 70, SEVPEB_SHARED);
    sevpeb_save_iterate(src, testchan_write, &s[1], 0);
    sevpeb_set_range(src, 5000, 3, SEVPEB_SHARED);
    sevpeb_save_complete(src, testchan_write, &s[2]);
    sevpeb_save_cleanup(src);
    sevpeb_tracker *dst = make(2);   /* a different state of its own */
    fp_t before = fingerprint(dst);
    int cases = 0, clean = 0;
    for (int phase = 0; phase < 3; phase++) {
        size_t len = s[phase].len;
        for (size_t at = 0; at <= len + 1; at++) {
            for (int mode = 0; mode < 3; mode++) {
                /* mode 0: short read (-ENODATA) at `at`; 1: reader error -EIO
                 * at `at`; 2: byte `at` flipped. */
                if (mode == 2 && at >= len) continue;
                sevpeb_load_setup(dst);
                int rc = 0;
                for (int p = 0; p <= phase && rc >= 0; p++) {
                    testchan r = s[p];
                    r.off = 0;
                    r.fail = 0;
                    uint8_t *copy = NULL;
                    if (p == phase) {
                        if (mode < 2) { r.fail = 1; r.fail_at = at; r.err = mode == 0 ? ENODATA : EIO; }
                        else { copy = malloc(len); memcpy(copy, r.data, len); copy[at] ^= (uint8_t)(1u << (at % 8)); r.data = copy; }
                    }
                    rc = sevpeb_load_state(dst, testchan_read, &r, 1);
                    free(copy);
                }
                sevpeb_load_cleanup(dst);
                int complete_ok = phase == 2 && rc == 1;
                if (at >= len && mode < 2) {
                    /* no failure injected inside the payload */
                    CHECK(rc == (phase == 2 ? 1 : 0), "intact phase %d rc %d", phase, rc);
                    if (complete_ok) { fp_t now = fingerprint(dst); free(before.bits); before = now; }
                    continue;
                }
                cases++;
                CHECK(rc < 0, "phase %d mode %d at %zu: rc %d", phase, mode, at, rc);
                if (mode == 0) CHECK(rc == -ENODATA, "short read rc %d", rc);
                if (mode == 1) CHECK(rc == -EIO, "reader error rc %d", rc);
                fp_t now = fingerprint(dst);
                int same = fp_equal(before, now);
                CHECK(same, "phase %d mode %d at %zu changed the destination", phase, mode, at);
                clean += same && rc < 0;
                free(now.bits);
            }
        }
    }
    /* Finally, a clean load still works. */
    sevpeb_tracker *d2 = make(4);
    CHECK(migrate(src, d2), "migration after failed loads");
    fp_t a = fingerprint(src), b = fingerprint(d2);
    CHECK(fp_equal(a, b), "clean migration after failures");
    printf("abuse: %d failed loads (short read, reader error, flipped byte at every offset of %zu+%zu+%zu bytes): "
           "%d clean errors, destination unchanged\n", cases, s[0].len, s[1].len, s[2].len, clean);
    free(a.bits); free(b.bits); free(before.bits);
    for (int i = 0; i < 3; i++) free(s[i].data);
    sevpeb_tracker_destroy(src);
    sevpeb_tracker_destroy(dst);
    sevpeb_tracker_destroy(d2);
}

int main(void)
{
    test_create_destroy();
    test_error_paths();
    test_failing_writer();
    test_failing_reader();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
