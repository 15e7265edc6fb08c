/*
 * The update fast path under contention (issue 13): 8 threads hammer the
 * same words of one mixed chunk with single-page updates (sevpeb_map_gpa_range
 * and sevpeb_set_range, which take no mutex there: one atomic RMW of the
 * word, then the chunk's dirty bit) while a migration thread runs
 * sevpeb_save_iterate (the encoder, which closes the update gate) and
 * queries. Page p of [0, 1024) belongs to thread p % 8, so each thread knows
 * the final state of its own pages although all of them share words.
 *
 * Checks, per round: a thread reads its page back as it set it (sevpeb_test,
 * lock-free too, while others change the same word); every page ends as
 * its owner last set it (no update lost to a racing RMW); the destination, loaded from everything the source
 * sent, equals the source bit for bit and by digest (an update the encoder
 * missed without the chunk being re-marked dirty would be missing there: the
 * round ends with an iterate, one fast update and save_complete, so a fast
 * update that does not mark its chunk fails every round).
 *
 *   hammer [rounds] [updates per thread]    (default 20, 100000)
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "sevpeb.h"

#define THREADS 8
#define OWN 1024                          /* pages [0, OWN) of chunk 0, page p owned by thread p % THREADS */
#define SLOT_PAGES (4 * 16384)            /* 4 chunks */

static sevpeb_tracker *src;
static atomic_int stop;
static atomic_long failures;
static uint8_t expect[OWN];
static long per_thread = 100000;

typedef struct { uint8_t *p; size_t len, cap, pos; } stream_t;
static stream_t stream;

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "hammer: " __VA_ARGS__); fputc('\n', stderr); \
                                              atomic_fetch_add(&failures, 1); } } while (0)

/* Only the migration thread (then main) writes the stream. */
static int wr(void *o, const uint8_t *b, size_t n)
{
    stream_t *s = o;
    if (s->len + n > s->cap) {
        size_t cap = (s->cap ? s->cap * 2 : 1 << 16) + n;
        uint8_t *p = realloc(s->p, cap);
        if (!p) return -ENOMEM;
        s->p = p; s->cap = cap;
    }
    memcpy(s->p + s->len, b, n);
    s->len += n;
    return 0;
}
static int rd(void *o, uint8_t *b, size_t n)
{
    stream_t *s = o;
    if (s->pos + n > s->len) return -ENODATA;
    memcpy(b, s->p + s->pos, n);
    s->pos += n;
    return 0;
}

typedef struct { int id; uint64_t seed; } worker_t;

static void *updater(void *arg)
{
    worker_t *w = arg;
    uint64_t s = w->seed;
    for (long i = 0; i < per_thread; i++) {
        uint64_t x = splitmix(&s);
        uint64_t p = (uint64_t)w->id + THREADS * (x % (OWN / THREADS));
        int v = (int)((x >> 20) & 1);
        long rc = (x >> 21) & 1 ? (long)sevpeb_map_gpa_range(src, p << 12, 1, v ? 0x10 : 0)
                                : (long)sevpeb_set_range(src, p, 1, v);
        CHECK(rc == 0, "thread %d: update of page %llu returned %ld", w->id, (unsigned long long)p, rc);
        expect[p] = (uint8_t)v;             /* this thread's own page */
        if ((x >> 22) % 4 == 0) {           /* read it back (sevpeb_test takes no mutex either) */
            int got = sevpeb_test(src, p);
            CHECK(got == v, "thread %d: page %llu reads %d right after it was set to %d", w->id, (unsigned long long)p, got, v);
        }
    }
    return NULL;
}

static long iterations;
static void *migrator(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        int rc = sevpeb_save_iterate(src, wr, &stream, 0);
        CHECK(rc >= 0, "save_iterate: %d", rc);
        iterations++;
        int64_t c = sevpeb_count_shared(src, 0, SLOT_PAGES);
        CHECK(c >= 0 && c <= SLOT_PAGES, "count_shared %lld", (long long)c);
    }
    return NULL;
}

static int round_trip(int round, uint64_t seed)
{
    long before = atomic_load(&failures);
    CHECK(sevpeb_tracker_create(0, &src) == 0, "create");
    CHECK(sevpeb_slot_add(src, 0, SLOT_PAGES) == 0, "slot_add");
    CHECK(sevpeb_set_range(src, 16383, 1, 0) == 0, "make chunk 0 mixed");
    memset(expect, 1, sizeof expect);
    stream.len = stream.pos = 0;
    CHECK(sevpeb_save_setup(src, wr, &stream) == 0, "save_setup");

    atomic_store(&stop, 0);
    iterations = 0;
    pthread_t th[THREADS], mt;
    worker_t ws[THREADS];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_create(&mt, NULL, migrator, NULL);
    for (int i = 0; i < THREADS; i++) {
        ws[i] = (worker_t){ i, seed * 1000 + (uint64_t)i };
        pthread_create(&th[i], NULL, updater, &ws[i]);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    atomic_store(&stop, 1);
    pthread_join(mt, NULL);

    /* Everything sent; then one fast update that only its dirty bit carries.
     * (The iterate left the update gate closed; an update that changes
     * nothing takes the mutex and reopens it, so the flip is lock-free.) */
    CHECK(sevpeb_save_iterate(src, wr, &stream, 0) >= 0, "last iterate");
    CHECK(sevpeb_set_range(src, 5, 1, expect[5]) == 0, "no-op update");
    expect[5] = !expect[5];
    CHECK(sevpeb_map_gpa_range(src, 5 << 12, 1, expect[5] ? 0x10 : 0) == 0, "tail update");
    CHECK(sevpeb_save_complete(src, wr, &stream) == 0, "save_complete");
    sevpeb_save_cleanup(src);

    for (uint64_t p = 0; p < OWN; p++) {
        int got = sevpeb_test(src, p);
        CHECK(got == expect[p], "round %d: page %llu is %d, its owner (thread %llu) last set %d: an update was lost",
              round, (unsigned long long)p, got, (unsigned long long)(p % THREADS), expect[p]);
    }

    sevpeb_tracker *dst;
    CHECK(sevpeb_tracker_create(0, &dst) == 0, "create dst");
    CHECK(sevpeb_slot_add(dst, 0, SLOT_PAGES) == 0, "dst slot_add");
    CHECK(sevpeb_load_setup(dst) == 0, "load_setup");
    int lr = 0, payloads = 0;
    while (lr == 0 && stream.pos < stream.len) { lr = sevpeb_load_state(dst, rd, &stream, 1); payloads++; }
    CHECK(lr == 1, "round %d: the destination did not commit (load_state %d after %d payloads: %s)", round, lr, payloads,
          lr < 0 ? sevpeb_last_error() : "stream ended");
    sevpeb_load_cleanup(dst);
    static uint8_t a[SLOT_PAGES / 8], b[SLOT_PAGES / 8];
    CHECK(sevpeb_get_bitmap(src, 0, SLOT_PAGES, a, sizeof a) == 0 && sevpeb_get_bitmap(dst, 0, SLOT_PAGES, b, sizeof b) == 0, "get_bitmap");
    if (memcmp(a, b, sizeof a) != 0) {
        size_t k = 0;
        while (a[k] == b[k]) k++;
        CHECK(0, "round %d: destination differs from the source at pages %zu..+8 (0x%02x vs 0x%02x)", round, k * 8, b[k], a[k]);
    }
    uint64_t ds = 0, dd = 1;
    CHECK(sevpeb_digest(src, &ds) == 0 && sevpeb_digest(dst, &dd) == 0 && ds == dd, "round %d: digests differ", round);
    sevpeb_tracker_destroy(dst);
    sevpeb_tracker_destroy(src);

    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (round == 0 || atomic_load(&failures) != before) {
        printf("hammer round %d: %d threads x %ld updates on %d pages of one chunk in %.2f s (%.1f M updates/s), "
               "%ld iterates beside them, %zu stream bytes, %d payloads: %s\n", round, THREADS, per_thread, OWN, s,
               THREADS * per_thread / s / 1e6, iterations, stream.len, payloads, atomic_load(&failures) == before ? "ok" : "FAILED");
    }
    return atomic_load(&failures) == before;
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    if (argc > 2) per_thread = atol(argv[2]);
    int ok = 0;
    for (int r = 0; r < rounds; r++) ok += round_trip(r, (uint64_t)r + 1);
    free(stream.p);
    printf("hammer: %d of %d rounds ok (%d threads on one chunk's words, encoder beside them)\n", ok, rounds, THREADS);
    return ok == rounds ? 0 : 1;
}
