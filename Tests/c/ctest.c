/*
 * C-level test of include/sevpeb.h against the installed archive (linked
 * through pkg-config by `make check`). Calls every function in the header,
 * checks results against a naive model, round-trips migration streams
 * through the callbacks, and hammers one tracker from 8+ threads while a
 * migration thread encodes. Prints "N passed, N failed".
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sevpeb.h"
#include "testcheck.h"
#include "testchan.h"


/* ---- naive model: one byte per page ---- */
#define MODEL_PAGES (1u << 20)
static uint8_t model[MODEL_PAGES]; /* 1 private, 0 shared; gfn 0..MODEL_PAGES */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int cb_calls;
static void on_change(void *opaque, uint64_t gfn, uint64_t n, int state)
{
    (void)gfn; (void)n; (void)state;
    __atomic_add_fetch((int *)opaque, 1, __ATOMIC_RELAXED);
}

static void test_basics(void)
{
    sevpeb_tracker *t = NULL;
    CHECK(sevpeb_version_number() == SEVPEB_VERSION_NUMBER, "version %u", sevpeb_version_number());
    CHECK(strcmp(sevpeb_version_string(), "0.1.0") == 0, "%s", sevpeb_version_string());
    CHECK(sevpeb_tracker_create(1, &t) == -EINVAL, "flags");
    CHECK(sevpeb_tracker_create(0, NULL) == -EINVAL, "null out");
    CHECK(sevpeb_tracker_create(0, &t) == 0 && t, "create");
    CHECK(strlen(sevpeb_strerror(-ERANGE)) > 0, "strerror");
    CHECK(strcmp(sevpeb_strerror(-12345), "unknown error") == 0, "strerror unknown");

    /* NULL handle everywhere: -EINVAL, no crash */
    uint64_t a, b;
    CHECK(sevpeb_slot_add(NULL, 0, 1) == -EINVAL, "null");
    CHECK(sevpeb_slot_remove(NULL, 0) == -EINVAL, "null");
    CHECK(sevpeb_slot_resize(NULL, 0, 1) == -EINVAL, "null");
    CHECK(sevpeb_slot_count(NULL) == -EINVAL, "null");
    CHECK(sevpeb_slot_get(NULL, 0, &a, &b) == -EINVAL, "null");
    CHECK(sevpeb_set_range(NULL, 0, 1, 0) == -EINVAL, "null");
    CHECK(sevpeb_test(NULL, 0) == -EINVAL, "null");
    CHECK(sevpeb_count_shared(NULL, 0, 1) == -EINVAL, "null");
    CHECK(sevpeb_totals(NULL, &a, &b) == -EINVAL, "null");
    CHECK(sevpeb_next_shared_run(NULL, 0, &a, &b) == -EINVAL, "null");
    CHECK(sevpeb_reset(NULL) == -EINVAL, "null");
    CHECK(sevpeb_digest(NULL, &a) == -EINVAL, "null");
    CHECK(sevpeb_memory_bytes(NULL) == 0, "null");
    CHECK(sevpeb_map_gpa_range(NULL, 0, 1, 0) == -SEVPEB_KVM_EINVAL, "null");
    CHECK(sevpeb_may_migrate(NULL) == -EINVAL, "null");
    sevpeb_save_cleanup(NULL);
    sevpeb_load_cleanup(NULL);
    sevpeb_tracker_destroy(NULL);

    /* layout */
    CHECK(sevpeb_slot_add(t, 0, 0) == -EINVAL, "empty slot");
    CHECK(sevpeb_slot_add(t, SEVPEB_GFN_LIMIT - 1, 2) == -ERANGE, "beyond limit");
    CHECK(sevpeb_slot_add(t, UINT64_MAX, 2) == -ERANGE, "overflow");
    CHECK(sevpeb_slot_add(t, 0, 0x80000) == 0, "slot0 [0,2G)");
    CHECK(sevpeb_slot_add(t, 0x100000, 0x100000) == 0, "slot1 [4G,8G)");
    CHECK(sevpeb_slot_add(t, 0x7ffff, 2) == -EEXIST, "overlap");
    CHECK(sevpeb_slot_count(t) == 2, "count %d", sevpeb_slot_count(t));
    CHECK(sevpeb_slot_get(t, 1, &a, &b) == 0 && a == 0x100000 && b == 0x100000, "get");
    CHECK(sevpeb_slot_get(t, 2, &a, &b) == -ENOENT, "get oob");
    CHECK(sevpeb_slot_get(t, 0, NULL, &b) == -EINVAL, "get null");

    /* state */
    CHECK(sevpeb_test(t, 5) == SEVPEB_PRIVATE, "default private");
    CHECK(sevpeb_test(t, 0x90000) == -ERANGE, "hole");
    CHECK(sevpeb_set_range(t, 0x90000, 1, 0) == -ERANGE, "hole set");
    CHECK(strstr(sevpeb_last_error(), "0x90000") != NULL, "message names gfn: %s", sevpeb_last_error());
    CHECK(sevpeb_set_range(t, 10, 0, 0) == -EINVAL, "npages 0");
    CHECK(sevpeb_set_range(t, 10, 1, 2) == -EINVAL, "state 2");
    CHECK(sevpeb_set_change_callback(t, on_change, &cb_calls) == 0, "cb");
    CHECK(sevpeb_set_range(t, 100, 50, SEVPEB_SHARED) == 0, "set shared");
    CHECK(cb_calls == 1, "callback once: %d", cb_calls);
    CHECK(sevpeb_set_range(t, 100, 50, SEVPEB_SHARED) == 0 && cb_calls == 1, "no change, no callback");
    CHECK(sevpeb_test(t, 100) == 0 && sevpeb_test(t, 149) == 0 && sevpeb_test(t, 150) == 1, "test");
    CHECK(sevpeb_count_shared(t, 0, 0x80000) == 50, "count");
    CHECK(sevpeb_count_shared(t, 0, 0x80001) == -ERANGE, "count hole");
    CHECK(sevpeb_totals(t, &a, &b) == 0 && a == 0x180000 && b == 50, "totals %" PRIu64 " %" PRIu64, a, b);
    CHECK(sevpeb_next_shared_run(t, 0, &a, &b) == 1 && a == 100 && b == 50, "run");
    CHECK(sevpeb_next_shared_run(t, 120, &a, &b) == 1 && a == 120 && b == 30, "run clipped");
    CHECK(sevpeb_next_shared_run(t, 150, &a, &b) == 0, "no more runs");

    /* batch enumeration: the same runs as sevpeb_next_shared_run, max at a time */
    {
        sevpeb_run r[4];
        CHECK(sevpeb_set_range(t, 0x7fff0, 16, SEVPEB_SHARED) == 0 && sevpeb_set_range(t, 200, 1, SEVPEB_SHARED) == 0,
              "more runs");
        CHECK(sevpeb_shared_runs(t, 0, r, 4) == 3 && r[0].gfn == 100 && r[0].npages == 50 && r[1].gfn == 200 &&
              r[1].npages == 1 && r[2].gfn == 0x7fff0 && r[2].npages == 16, "batch of 3");
        CHECK(sevpeb_shared_runs(t, 120, r, 2) == 2 && r[0].gfn == 120 && r[0].npages == 30 && r[1].gfn == 200,
              "batch clipped, max 2");
        CHECK(sevpeb_shared_runs(t, 201, r, 4) == 1 && r[0].gfn == 0x7fff0, "from after a run");
        CHECK(sevpeb_shared_runs(t, 0x80000, r, 4) == 0, "no more runs (batch)");
        CHECK(sevpeb_shared_runs(t, 0, NULL, 0) == 0, "max 0");
        CHECK(sevpeb_shared_runs(t, 0, NULL, 1) == -EINVAL, "runs NULL");
        CHECK(sevpeb_shared_runs(NULL, 0, r, 1) == -EINVAL, "t NULL");
        CHECK(sevpeb_shared_runs(t, 0, r, SIZE_MAX) == -EINVAL && strstr(sevpeb_last_error(), "max") != NULL,
              "max above INT64_MAX: %s", sevpeb_last_error());
        CHECK(sevpeb_set_range(t, 0x7fff0, 16, SEVPEB_PRIVATE) == 0 && sevpeb_set_range(t, 200, 1, SEVPEB_PRIVATE) == 0,
              "undo");
    }

    /* bitmap out / in */
    uint8_t bm[32];
    memset(bm, 0xAA, sizeof(bm));
    CHECK(sevpeb_get_bitmap(t, 96, 13, bm, 1) == -ENOSPC, "enospc");
    CHECK(sevpeb_get_bitmap(t, 96, 13, bm, sizeof(bm)) == 0, "get");
    CHECK(bm[0] == 0x0F && (bm[1] & 0x1F) == 0x00 && (bm[1] & 0xE0) == 0xA0, "bits %02x %02x", bm[0], bm[1]);
    uint8_t in[2] = { 0x55, 0x01 };
    CHECK(sevpeb_set_bitmap(t, 200, 9, in, 1) == -ENOSPC, "enospc in");
    CHECK(sevpeb_set_bitmap(t, 200, 9, in, 2) == 0, "set bitmap");
    CHECK(sevpeb_test(t, 200) == 1 && sevpeb_test(t, 201) == 0 && sevpeb_test(t, 208) == 1, "exact values");
    CHECK(sevpeb_set_bitmap(t, 200, 9, NULL, 0) == 0 && sevpeb_count_shared(t, 200, 9) == 0, "null = private");

    /* hypercall */
    int64_t r;
    r = sevpeb_map_gpa_range(t, 0x1000, 4, 0); /* decrypted, 4K */
    CHECK(r == 0 && sevpeb_count_shared(t, 1, 4) == 4, "map shared %" PRId64, r);
    r = sevpeb_map_gpa_range(t, 0x1001, 4, 0);
    CHECK(r == -SEVPEB_KVM_EINVAL && strstr(sevpeb_last_error(), "aligned"), "misaligned");
    CHECK(sevpeb_map_gpa_range(t, 0x1000, 0, 0x10) == -SEVPEB_KVM_EINVAL, "npages 0");
    CHECK(sevpeb_map_gpa_range(t, 0x1000, 1, 0x30) == -SEVPEB_KVM_EINVAL, "reserved bit 5");
    CHECK(sevpeb_map_gpa_range(t, 0x1000, 1, 0x13) == -SEVPEB_KVM_EINVAL, "page size 3");
    CHECK(sevpeb_map_gpa_range(t, 0xfffffffffffff000ull, 2, 0x10) == -SEVPEB_KVM_EINVAL, "overflow");
    CHECK(sevpeb_map_gpa_range(t, 0x80000000ull, 1, 0x10) == -SEVPEB_KVM_EINVAL, "hole");
    CHECK(sevpeb_count_shared(t, 1, 4) == 4, "errors changed nothing");
    CHECK(sevpeb_map_gpa_range(t, 0x1000, 4, 0x11) == 0 && sevpeb_count_shared(t, 1, 4) == 0, "2M hint ok");

    /* migration control */
    CHECK(sevpeb_get_migration_control(t) == 0, "mc 0");
    CHECK(sevpeb_set_migration_control(t, 2) == -EINVAL, "reserved mc");
    CHECK(sevpeb_may_migrate(t) == 1, "may");
    CHECK(sevpeb_set_require_ready(t, 1) == 0 && sevpeb_may_migrate(t) == 0, "not ready");
    CHECK(strstr(sevpeb_last_error(), "migration-ready") != NULL, "reason: %s", sevpeb_last_error());
    testchan s = { 0 };
    CHECK(sevpeb_save_setup(t, testchan_write, &s) == -EAGAIN, "setup refused");
    CHECK(sevpeb_set_migration_control(t, 1) == 0 && sevpeb_may_migrate(t) == 1, "ready");
    testchan_free(&s);

    /* digest and memory */
    uint64_t d1, d2;
    CHECK(sevpeb_digest(t, &d1) == 0 && sevpeb_digest(t, &d2) == 0 && d1 == d2, "digest stable");
    sevpeb_set_range(t, 7, 1, 0);
    CHECK(sevpeb_digest(t, &d2) == 0 && d1 != d2, "digest changes");
    CHECK(sevpeb_memory_bytes(t) > 0 && sevpeb_memory_bytes(t) < 64 * 1024, "memory %" PRIu64, sevpeb_memory_bytes(t));

    /* resize / remove */
    CHECK(sevpeb_slot_resize(t, 0x100000, 0x200000) == 0, "grow");
    CHECK(sevpeb_slot_resize(t, 0, 0x100001) == -EEXIST, "grow into next");
    CHECK(sevpeb_slot_resize(t, 0x100001, 5) == -ENOENT, "resize no slot");
    CHECK(sevpeb_slot_resize(t, 0, 120) == 0 && sevpeb_count_shared(t, 0, 120) == 21, "shrink keeps state %" PRId64,
          sevpeb_count_shared(t, 0, 120));
    CHECK(sevpeb_slot_resize(t, 0, 0x80000) == 0 && sevpeb_count_shared(t, 120, 100) == 0, "regrown private");
    CHECK(sevpeb_reset(t) == 0 && sevpeb_totals(t, &a, &b) == 0 && b == 0, "reset");
    CHECK(sevpeb_slot_remove(t, 0x100000) == 0 && sevpeb_slot_count(t) == 1, "remove");
    CHECK(sevpeb_slot_remove(t, 0x100000) == -ENOENT, "remove twice");
    CHECK(sevpeb_set_change_callback(t, NULL, NULL) == 0, "cb off");
    sevpeb_tracker_destroy(t);
}

/* ---- migration round trip through the callbacks ---- */
static void check_equal(sevpeb_tracker *x, sevpeb_tracker *y, const char *what)
{
    uint64_t dx, dy, px, sx, py, sy;
    sevpeb_digest(x, &dx);
    sevpeb_digest(y, &dy);
    sevpeb_totals(x, &px, &sx);
    sevpeb_totals(y, &py, &sy);
    CHECK(dx == dy && px == py && sx == sy, "%s: digest %016" PRIx64 " vs %016" PRIx64 ", shared %" PRIu64 " vs %" PRIu64,
          what, dx, dy, sx, sy);
}

static void test_migration(void)
{
    sevpeb_tracker *src, *dst;
    sevpeb_tracker_create(0, &src);
    sevpeb_tracker_create(0, &dst);
    sevpeb_slot_add(src, 0, 0x80000);
    sevpeb_slot_add(src, 0x100000, 0x400000);
    sevpeb_slot_add(dst, 0, 0x80000);
    sevpeb_slot_add(dst, 0x100000, 0x400000);
    sevpeb_set_range(src, 0x40000, 0x3ff00, 0);
    for (int i = 0; i < 64; i++) {
        sevpeb_set_range(src, 0x123456 + i * 211, 1, 0);
    }
    sevpeb_set_migration_control(src, 1);

    testchan s = { 0 };
    CHECK(sevpeb_save_iterate(src, testchan_write, &s, 0) == -EPROTO, "iterate before setup");
    CHECK(sevpeb_save_setup(src, testchan_write, &s) == 0, "setup");
    CHECK(sevpeb_save_setup(src, testchan_write, &s) == -EBUSY, "second setup");
    size_t setup_len = s.len;
    CHECK(setup_len < 4096, "setup bytes %zu", setup_len);
    sevpeb_set_range(src, 0x200000, 33, 0);
    int rc = sevpeb_save_iterate(src, testchan_write, &s, 1 << 20);
    CHECK(rc == 1, "iterate done %d", rc);
    CHECK(sevpeb_save_pending(src) == 0, "nothing pending");
    size_t before = s.len;
    CHECK(sevpeb_save_complete(src, testchan_write, &s) == 0, "complete");
    CHECK(s.len - before <= 64, "complete bytes %zu", s.len - before);
    sevpeb_save_stats st = { .size = sizeof(st) };
    CHECK(sevpeb_save_get_stats(src, &st) == 0 && st.setup_bytes == setup_len && st.iterations == 1 &&
          st.complete_bytes == s.len - before, "stats");
    st.size = 4;
    CHECK(sevpeb_save_get_stats(src, &st) == -EINVAL, "stats size");
    sevpeb_save_cleanup(src);

    /* the three payloads: setup, iterate, complete */
    CHECK(sevpeb_load_setup(dst) == 0, "load setup");
    int r1 = sevpeb_load_state(dst, testchan_read, &s, 1);
    int r2 = sevpeb_load_state(dst, testchan_read, &s, 1);
    int r3 = sevpeb_load_state(dst, testchan_read, &s, 1);
    CHECK(r1 == 0 && r2 == 0 && r3 == 1, "load %d %d %d", r1, r2, r3);
    CHECK(s.off == s.len, "consumed all");
    check_equal(src, dst, "round trip");
    CHECK(sevpeb_get_migration_control(dst) == 1, "control migrated");
    sevpeb_load_cleanup(dst);

    /* truncation: every prefix fails cleanly and leaves dst as it was */
    uint64_t before_digest, after_digest;
    sevpeb_set_range(dst, 5, 1, 0);
    sevpeb_digest(dst, &before_digest);
    int bad = 0;
    for (size_t cut = 0; cut < s.len; cut += (cut < 64 ? 1 : 97)) {
        testchan c = { .data = s.data, .len = cut };
        sevpeb_load_setup(dst);
        int rr = 0;
        for (int k = 0; k < 3 && rr >= 0; k++) {
            rr = sevpeb_load_state(dst, testchan_read, &c, 1);
            if (rr == 1) {
                break;
            }
        }
        if (rr >= 0) {
            bad++;
        }
        sevpeb_load_cleanup(dst);
    }
    sevpeb_digest(dst, &after_digest);
    CHECK(bad == 0 && before_digest == after_digest, "truncations rejected (%d accepted), dst unchanged", bad);

    /* flipped byte anywhere: rejected or (if it hit padding-free data) digest mismatch */
    int accepted = 0;
    for (size_t i = 0; i < s.len; i++) {
        uint8_t *copy = malloc(s.len);
        memcpy(copy, s.data, s.len);
        copy[i] ^= 0x10;
        testchan c = { .data = copy, .len = s.len };
        sevpeb_load_setup(dst);
        int rr = 0;
        for (int k = 0; k < 3; k++) {
            rr = sevpeb_load_state(dst, testchan_read, &c, 1);
            if (rr != 0) {
                break;
            }
        }
        if (rr == 1) {
            accepted++;
            fprintf(stderr, "accepted flip at %zu of %zu\n", i, s.len);
        }
        sevpeb_load_cleanup(dst);
        free(copy);
    }
    sevpeb_digest(dst, &after_digest);
    CHECK(accepted == 0 && before_digest == after_digest, "flipped bytes: %d accepted", accepted);

    /* version check */
    testchan c = { .data = s.data, .len = s.len };
    sevpeb_load_setup(dst);
    CHECK(sevpeb_load_state(dst, testchan_read, &c, 2) == -EPROTONOSUPPORT, "version 2");
    sevpeb_load_cleanup(dst);

    /* writer failure mid-save: error returned, source state unchanged */
    uint64_t d0, d1;
    sevpeb_digest(src, &d0);
    testchan w = { .fail = 1, .fail_at = 10 };
    CHECK(sevpeb_save_setup(src, testchan_write, &w) == -EIO, "write error");
    sevpeb_save_cleanup(src);
    sevpeb_digest(src, &d1);
    CHECK(d0 == d1, "source unchanged after failed save");
    testchan_free(&w);
    testchan_free(&s);
    sevpeb_tracker_destroy(src);
    sevpeb_tracker_destroy(dst);
}

/* ---- threads: 8 updaters + a migration thread + readers ---- */
typedef struct {
    sevpeb_tracker *t;
    int id;
    int stop;
} targ_t;

static void *updater(void *p)
{
    targ_t *a = p;
    uint64_t s = 0x1234567ull * (a->id + 1);
    for (int i = 0; i < 20000; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        uint64_t gfn = (s >> 8) % (MODEL_PAGES - 300);
        switch (s & 7) {
        case 0: sevpeb_set_range(a->t, gfn, 1 + (s >> 40) % 300, (s >> 3) & 1); break;
        case 1: sevpeb_map_gpa_range(a->t, gfn << 12, 1, ((s >> 3) & 1) << 4); break;
        case 2: sevpeb_test(a->t, gfn); break;
        case 3: sevpeb_count_shared(a->t, gfn, 200); break;
        case 4: { uint8_t b[40]; sevpeb_get_bitmap(a->t, gfn, 300, b, sizeof(b)); break; }
        case 5: { uint8_t b[8]; memset(b, (int)s, sizeof(b)); sevpeb_set_bitmap(a->t, gfn, 64, b, sizeof(b)); break; }
        case 6: { uint64_t g, n; sevpeb_next_shared_run(a->t, gfn, &g, &n); break; }
        default: { uint64_t d; sevpeb_digest(a->t, &d); sevpeb_memory_bytes(a->t); break; }
        }
    }
    return NULL;
}

static void test_threads(void)
{
    for (int round = 0; round < 3; round++) {
        sevpeb_tracker *src, *dst;
        sevpeb_tracker_create(0, &src);
        sevpeb_tracker_create(0, &dst);
        sevpeb_slot_add(src, 0, MODEL_PAGES);
        sevpeb_slot_add(dst, 0, MODEL_PAGES);
        int calls = 0;
        sevpeb_set_change_callback(src, on_change, &calls);
        testchan s = { 0 };
        CHECK(sevpeb_save_setup(src, testchan_write, &s) == 0, "setup");
        pthread_t th[8];
        targ_t args[8];
        for (int i = 0; i < 8; i++) {
            args[i] = (targ_t){ .t = src, .id = i + round * 8 };
            pthread_create(&th[i], NULL, updater, &args[i]);
        }
        int iters = 0;
        for (int i = 0; i < 50; i++) {
            if (sevpeb_save_iterate(src, testchan_write, &s, 4096) < 0) {
                break;
            }
            sevpeb_save_pending(src);
            iters++;
        }
        for (int i = 0; i < 8; i++) {
            pthread_join(th[i], NULL);
        }
        /* "VM stopped": drain, complete */
        CHECK(sevpeb_save_complete(src, testchan_write, &s) == 0, "complete");
        sevpeb_save_cleanup(src);
        sevpeb_load_setup(dst);
        int r = 0, n = 0;
        while ((r = sevpeb_load_state(dst, testchan_read, &s, 1)) == 0 && n < 1000) {
            n++;
        }
        CHECK(r == 1, "committed after %d payloads (r=%d)", n, r);
        check_equal(src, dst, "threads");
        CHECK(calls > 0, "callbacks %d", calls);
        sevpeb_load_cleanup(dst);
        testchan_free(&s);
        sevpeb_tracker_destroy(src);
        sevpeb_tracker_destroy(dst);
    }
}

/* ---- random ops against the naive model ---- */
static void test_model(void)
{
    sevpeb_tracker *t;
    sevpeb_tracker_create(0, &t);
    sevpeb_slot_add(t, 0, MODEL_PAGES);
    memset(model, 1, sizeof(model));
    int mism = 0;
    for (int i = 0; i < 3000; i++) {
        uint64_t r = rnd();
        uint64_t gfn = r % MODEL_PAGES;
        uint64_t n = 1 + (rnd() % ((r & 1) ? 70000 : 130));
        if (gfn + n > MODEL_PAGES) {
            n = MODEL_PAGES - gfn;
        }
        int st = (r >> 20) & 1;
        if ((r >> 21) % 5 == 0) {
            uint8_t *b = malloc((n + 7) / 8);
            for (uint64_t k = 0; k < (n + 7) / 8; k++) {
                b[k] = (uint8_t)rnd();
            }
            sevpeb_set_bitmap(t, gfn, n, b, (n + 7) / 8);
            for (uint64_t k = 0; k < n; k++) {
                model[gfn + k] = (b[k / 8] >> (k % 8)) & 1;
            }
            free(b);
        } else {
            sevpeb_set_range(t, gfn, n, st);
            memset(model + gfn, st, n);
        }
        uint64_t q = rnd() % MODEL_PAGES, qn = 1 + rnd() % 5000;
        if (q + qn > MODEL_PAGES) {
            qn = MODEL_PAGES - q;
        }
        int64_t want = 0;
        for (uint64_t k = 0; k < qn; k++) {
            want += !model[q + k];
        }
        if (sevpeb_count_shared(t, q, qn) != want) {
            mism++;
        }
    }
    /* full compare via get_bitmap */
    uint8_t *all = malloc(MODEL_PAGES / 8);
    sevpeb_get_bitmap(t, 0, MODEL_PAGES, all, MODEL_PAGES / 8);
    for (uint64_t k = 0; k < MODEL_PAGES; k++) {
        if (((all[k / 8] >> (k % 8)) & 1) != model[k]) {
            mism++;
            break;
        }
    }
    /* runs cover exactly the shared pages */
    uint64_t from = 0, g, n, total = 0, want_total = 0;
    while (sevpeb_next_shared_run(t, from, &g, &n) == 1) {
        total += n;
        from = g + n;
    }
    for (uint64_t k = 0; k < MODEL_PAGES; k++) {
        want_total += !model[k];
    }
    CHECK(mism == 0 && total == want_total, "model mismatches %d, runs %" PRIu64 " vs %" PRIu64, mism, total, want_total);
    free(all);
    sevpeb_tracker_destroy(t);
}

/* The path record of a migration compared with the live state (sevpeb_count_differences). */
static void test_count_differences(void)
{
    sevpeb_tracker *live, *rec;
    uint64_t count = 0, gfns[4] = { 0 };
    int r;

    CHECK(sevpeb_tracker_create(0, &live) == 0 && sevpeb_tracker_create(0, &rec) == 0, "create");
    CHECK(sevpeb_slot_add(live, 0, 0x30000) == 0 && sevpeb_slot_add(rec, 0, 0x30000) == 0, "slots");
    /* Every page sent private, then 3 pages turn shared and only one of them is resent shared. */
    CHECK(sevpeb_set_range(live, 0x20000, 3, SEVPEB_SHARED) == 0, "convert");
    CHECK(sevpeb_set_range(rec, 0x20001, 1, SEVPEB_SHARED) == 0, "resend");
    r = sevpeb_count_differences(live, rec, 0, 0x30000, &count, gfns, 4);
    CHECK(r == 2 && count == 2 && gfns[0] == 0x20000 && gfns[1] == 0x20002,
          "misrouted r=%d count=%" PRIu64 " gfns 0x%" PRIx64 " 0x%" PRIx64, r, count, gfns[0], gfns[1]);
    r = sevpeb_count_differences(live, rec, 0, 0x20000, &count, NULL, 0);
    CHECK(r == 0 && count == 0, "clean range r=%d count=%" PRIu64, r, count);
    CHECK(sevpeb_count_differences(live, rec, 0x2ffff, 2, &count, NULL, 0) == -ERANGE, "outside");
    CHECK(strstr(sevpeb_last_error(), "tracker") != NULL, "message: %s", sevpeb_last_error());
    CHECK(sevpeb_count_differences(NULL, rec, 0, 1, &count, NULL, 0) == -EINVAL, "null a");
    CHECK(sevpeb_count_differences(live, rec, 0, 1, &count, NULL, 1) == -EINVAL, "null gfns");
    sevpeb_tracker_destroy(rec);
    sevpeb_tracker_destroy(live);
}

int main(void)
{
    test_basics();
    test_migration();
    test_model();
    test_threads();
    test_count_differences();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
