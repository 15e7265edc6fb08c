/*
 * Concurrency stress of include/sevpeb.h (issue 7): per run, 8+ updater
 * threads (single pages, ranges, exact bitmaps, MAP_GPA_RANGE hypercalls with
 * valid and hostile arguments) and a VMM thread (cold resets, memory hot-plug
 * mirrored on the destination, MSR writes) hammer a source tracker while a
 * migration thread runs save_setup / save_iterate (random byte budgets) and,
 * once the "VM" is stopped, save_complete; a destination thread decodes every
 * payload as it arrives. After each run the destination must equal the
 * source exactly: layout, every page, totals, digest, control value.
 *
 *   stress [runs] [seed]       (default 1000 runs)
 * Prints the figures and "N passed, N failed".
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sevpeb.h"
#include "testchan.h"

#define UPDATERS 8
#define MAX_SLOTS 12

static int passed, failed;
static void fail(int run, const char *what, long long a, long long b)
{
    failed++;
    if (failed <= 20) {
        fprintf(stderr, "FAIL run %d: %s (%lld vs %lld) last error: %s\n", run, what, a, b, sevpeb_last_error());
    }
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- payload queue: migration thread -> destination thread ---- */
typedef struct payload {
    uint8_t *data;
    size_t len;
    int final;
    struct payload *next;
} payload;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    payload *head, *tail;
    int closed;
} queue;

static void q_push(queue *q, payload *p)
{
    pthread_mutex_lock(&q->mu);
    if (q->tail) q->tail->next = p; else q->head = p;
    q->tail = p;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}
static payload *q_pop(queue *q)
{
    pthread_mutex_lock(&q->mu);
    while (!q->head && !q->closed) pthread_cond_wait(&q->cv, &q->mu);
    payload *p = q->head;
    if (p) {
        q->head = p->next;
        if (!q->head) q->tail = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    return p;
}
static void q_close(queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}


/* ---- one run ---- */
typedef struct {
    int run;
    sevpeb_tracker *src, *dst;
    uint64_t seed;
    uint64_t base[MAX_SLOTS], pages[MAX_SLOTS];
    _Atomic int nslots;          /* slots the updaters may target (grows with hot-plug) */
    _Atomic int stop;            /* VM stopped: updaters and VMM thread finish */
    _Atomic uint64_t updates, changes, rejected;
    _Atomic int done;            /* updaters finished */
    queue q;
    uint64_t bytes, payloads, iterations;
    int load_result, load_calls;
} run_t;

typedef struct { run_t *r; uint64_t seed; int id; } worker;

static void on_change(void *opaque, uint64_t gfn, uint64_t n, int state)
{
    run_t *r = opaque;
    atomic_fetch_add_explicit(&r->changes, 1, memory_order_relaxed);
    /* Callbacks may call back into the library (no lock held). */
    if ((gfn & 63) == 7 && n > 0) (void)sevpeb_test(r->src, gfn);
    (void)state;
}

static void *updater(void *arg)
{
    worker *w = arg;
    run_t *r = w->r;
    uint64_t s = w->seed;
    uint8_t bits[512];
    int ops = 100 + (int)(splitmix(&s) % 400);
    for (int i = 0; i < ops; i++) {
        uint64_t x = splitmix(&s);
        int k = (int)(x % (uint64_t)atomic_load(&r->nslots));
        uint64_t base = r->base[k], np = r->pages[k];
        uint64_t off = splitmix(&s) % np;
        uint64_t n;
        switch ((x >> 8) % 8) {
        case 0: case 1: n = 1; break;                                     /* single pages */
        case 2: n = 1 + splitmix(&s) % 64; break;
        default: n = 1 + splitmix(&s) % (((x >> 16) & 1) ? 40000 : 2000); break;
        }
        if (off + n > np) n = np - off;
        uint64_t gfn = base + off;
        int rc;
        switch ((x >> 20) % 6) {
        case 0: case 1:
            rc = sevpeb_set_range(r->src, gfn, n, (int)((x >> 30) & 1));
            break;
        case 2: {
            uint64_t m = n > 4096 ? 4096 : n;
            for (size_t b = 0; b < (m + 7) / 8; b++) bits[b] = (uint8_t)splitmix(&s);
            rc = sevpeb_set_bitmap(r->src, gfn, m, (x >> 31) & 7 ? bits : NULL, sizeof bits);
            break;
        }
        case 3: case 4:
            rc = (int)sevpeb_map_gpa_range(r->src, gfn << 12, n, (x >> 33) & 1 ? 0x10 : 0x0);
            break;
        default: {
            /* Hostile guest: misaligned, reserved attrs, out of RAM, overflow. */
            uint64_t gpa = splitmix(&s), np2 = splitmix(&s), attrs = splitmix(&s);
            switch ((x >> 40) % 4) {
            case 0: gpa = (gfn << 12) | 0x800; attrs = 0x10; break;
            case 1: gpa = gfn << 12; attrs = 0x30; break;
            case 2: gpa = (r->base[k] + r->pages[k]) << 12; np2 = 1; attrs = 0x10; break;
            default: break;
            }
            int64_t v = sevpeb_map_gpa_range(r->src, gpa, np2, attrs);
            if (v != 0 && v != -SEVPEB_KVM_EINVAL) fail(r->run, "hostile hypercall return", v, -22);
            if (v != 0) atomic_fetch_add_explicit(&r->rejected, 1, memory_order_relaxed);
            rc = 0;
            break;
        }
        }
        if (rc != 0) fail(r->run, "update failed", rc, 0);
        atomic_fetch_add_explicit(&r->updates, 1, memory_order_relaxed);
        if ((x >> 50) % 16 == 0) {   /* a vCPU exit takes time: let the migration thread in */
            struct timespec ts = {0, (long)(x >> 54) * 1000};
            nanosleep(&ts, NULL);
        }
        /* Concurrent queries. */
        if ((x & 15) == 0) {
            int64_t c = sevpeb_count_shared(r->src, base, np);
            if (c < 0 || (uint64_t)c > np) fail(r->run, "count_shared", c, (long long)np);
        }
    }
    atomic_fetch_add(&r->done, 1);
    return NULL;
}

/* The VMM's thread: resets, hot-plug (destination first, so every LAYOUT
 * the source sends names slots the destination has), MSR writes. */
static void *vmm(void *arg)
{
    worker *w = arg;
    run_t *r = w->r;
    uint64_t s = w->seed;
    for (int i = 0; i < 6 && !atomic_load(&r->stop); i++) {
        uint64_t x = splitmix(&s);
        struct timespec ts = {0, (long)(x % 400000)};
        nanosleep(&ts, NULL);
        switch (x % 4) {
        case 0:
            if (sevpeb_reset(r->src) != 0) fail(r->run, "reset", 0, 0);
            break;
        case 1: {
            int k = atomic_load(&r->nslots);
            if (k < MAX_SLOTS) {
                uint64_t b = r->base[k - 1] + r->pages[k - 1] + (x >> 8) % 3 * 1000;
                uint64_t n = 1 + (x >> 16) % 20000;
                if (sevpeb_slot_add(r->dst, b, n) != 0) fail(r->run, "hot-plug dst", 0, 0);
                if (sevpeb_slot_add(r->src, b, n) != 0) fail(r->run, "hot-plug src", 0, 0);
                r->base[k] = b;
                r->pages[k] = n;
                atomic_store(&r->nslots, k + 1);
            }
            break;
        }
        default:
            sevpeb_set_migration_control(r->src, (x >> 8) & 1);
            break;
        }
    }
    return NULL;
}

static void *destination(void *arg)
{
    run_t *r = arg;
    sevpeb_load_setup(r->dst);
    payload *p;
    while ((p = q_pop(&r->q))) {
        testchan b = { .data = p->data, .len = p->len, .cap = p->len };
        int rc = sevpeb_load_state(r->dst, testchan_read, &b, SEVPEB_SECTION_VERSION);
        r->load_calls++;
        if (rc < 0 || rc != p->final || b.off != b.len) {
            fail(r->run, "load_state", rc, p->final);
            r->load_result = rc < 0 ? rc : -1;
        } else if (p->final) {
            r->load_result = 1;
        }
        free(p->data);
        free(p);
    }
    sevpeb_load_cleanup(r->dst);
    return NULL;
}

static void send_payload(run_t *r, testchan *b, int final)
{
    payload *p = calloc(1, sizeof *p);
    p->data = b->data;
    p->len = b->len;
    p->final = final;
    r->bytes += b->len;
    r->payloads++;
    memset(b, 0, sizeof *b);
    q_push(&r->q, p);
}

static void compare(run_t *r)
{
    int ns = sevpeb_slot_count(r->src), nd = sevpeb_slot_count(r->dst);
    if (ns != nd) { fail(r->run, "slot count", ns, nd); return; }
    uint64_t ps, ss, pd, sd, ds, dd;
    sevpeb_totals(r->src, &ps, &ss);
    sevpeb_totals(r->dst, &pd, &sd);
    if (ps != pd || ss != sd) fail(r->run, "shared pages", (long long)ss, (long long)sd);
    sevpeb_digest(r->src, &ds);
    sevpeb_digest(r->dst, &dd);
    if (ds != dd) fail(r->run, "digest", (long long)ds, (long long)dd);
    if (sevpeb_get_migration_control(r->src) != sevpeb_get_migration_control(r->dst)) fail(r->run, "control", 0, 1);
    for (int i = 0; i < ns; i++) {
        uint64_t b1, n1, b2, n2;
        sevpeb_slot_get(r->src, (uint32_t)i, &b1, &n1);
        sevpeb_slot_get(r->dst, (uint32_t)i, &b2, &n2);
        if (b1 != b2 || n1 != n2) { fail(r->run, "slot", (long long)b1, (long long)b2); return; }
        size_t len = (n1 + 7) / 8;
        uint8_t *x = calloc(1, len), *y = calloc(1, len);
        sevpeb_get_bitmap(r->src, b1, n1, x, len);
        sevpeb_get_bitmap(r->dst, b2, n2, y, len);
        if (memcmp(x, y, len) != 0) fail(r->run, "page states differ in slot", i, 0);
        free(x);
        free(y);
    }
    passed++;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    int runs = argc > 1 ? atoi(argv[1]) : 1000;
    uint64_t seed0 = argc > 2 ? strtoull(argv[2], NULL, 0) : 0x5eed;
    uint64_t tot_updates = 0, tot_changes = 0, tot_bytes = 0, tot_payloads = 0, tot_rejected = 0, tot_iter = 0;
    double t0 = now();
    for (int run = 0; run < runs; run++) {
        run_t *r = calloc(1, sizeof *r);
        r->run = run;
        uint64_t s = seed0 * 1000003 + (uint64_t)run;
        pthread_mutex_init(&r->q.mu, NULL);
        pthread_cond_init(&r->q.cv, NULL);
        if (sevpeb_tracker_create(0, &r->src) || sevpeb_tracker_create(0, &r->dst)) { fail(run, "create", 0, 0); break; }
        /* Layout: 1-4 slots, touching or not, some at chunk boundaries. */
        int n = 1 + (int)(splitmix(&s) % 4);
        uint64_t b = splitmix(&s) % 3 == 0 ? (1ull << 40) : splitmix(&s) % 100000;
        for (int i = 0; i < n; i++) {
            uint64_t pages = 1 + splitmix(&s) % (splitmix(&s) & 1 ? 70000 : 3000);
            r->base[i] = b;
            r->pages[i] = pages;
            sevpeb_slot_add(r->src, b, pages);
            sevpeb_slot_add(r->dst, b, pages);
            b += pages + (splitmix(&s) & 1 ? 0 : 1 + splitmix(&s) % 5000);
        }
        atomic_store(&r->nslots, n);
        /* The destination starts with a stale state of its own. */
        sevpeb_set_range(r->dst, r->base[0], (r->pages[0] + 1) / 2, SEVPEB_SHARED);
        sevpeb_set_change_callback(r->src, on_change, r);
        pthread_t th[UPDATERS + 2], dth;
        worker ws[UPDATERS + 1];
        pthread_create(&dth, NULL, destination, r);
        /* Some state before the migration starts. */
        sevpeb_set_range(r->src, r->base[0], 1 + r->pages[0] / 3, SEVPEB_SHARED);
        testchan out = {0};
        if (sevpeb_save_setup(r->src, testchan_write, &out) != 0) fail(run, "save_setup", 0, 0);
        send_payload(r, &out, 0);
        int nup = UPDATERS;
        for (int i = 0; i < nup; i++) {
            ws[i] = (worker){r, splitmix(&s), i};
            pthread_create(&th[i], NULL, updater, &ws[i]);
        }
        ws[nup] = (worker){r, splitmix(&s), nup};
        pthread_create(&th[nup], NULL, vmm, &ws[nup]);
        /* Migration thread (this one): iterate while the VM runs (until the
         * updaters are done, at most 400 iterations). */
        for (int i = 0; i < 400 && atomic_load(&r->done) < nup; i++) {
            struct timespec ts = {0, (long)(splitmix(&s) % 50000)};
            nanosleep(&ts, NULL);
            uint64_t budget = splitmix(&s) % 3 == 0 ? 0 : 64 + splitmix(&s) % 4096;
            int rc = sevpeb_save_iterate(r->src, testchan_write, &out, budget);
            if (rc < 0) fail(run, "save_iterate", rc, 0);
            send_payload(r, &out, 0);
            r->iterations++;
        }
        /* Stop the VM, then complete. */
        atomic_store(&r->stop, 1);
        for (int i = 0; i <= nup; i++) pthread_join(th[i], NULL);
        if (sevpeb_save_complete(r->src, testchan_write, &out) != 0) fail(run, "save_complete", 0, 0);
        send_payload(r, &out, 1);
        sevpeb_save_cleanup(r->src);
        q_close(&r->q);
        pthread_join(dth, NULL);
        if (r->load_result != 1) fail(run, "destination did not commit", r->load_result, 1);
        else compare(r);
        tot_updates += atomic_load(&r->updates);
        tot_changes += atomic_load(&r->changes);
        tot_rejected += atomic_load(&r->rejected);
        tot_bytes += r->bytes;
        tot_payloads += r->payloads;
        tot_iter += r->iterations;
        sevpeb_tracker_destroy(r->src);
        sevpeb_tracker_destroy(r->dst);
        pthread_mutex_destroy(&r->q.mu);
        pthread_cond_destroy(&r->q.cv);
        free(r);
    }
    double dt = now() - t0;
    printf("stress: %d runs in %.1f s, %d updater threads + VMM thread + migration + destination per run\n",
           runs, dt, UPDATERS);
    printf("stress: %" PRIu64 " updates (%.0f/s, %" PRIu64 " hostile hypercalls rejected, %" PRIu64 " change callbacks), "
           "%" PRIu64 " payloads (%" PRIu64 " iterates), %" PRIu64 " bytes streamed\n",
           tot_updates, tot_updates / dt, tot_rejected, tot_changes, tot_payloads, tot_iter, tot_bytes);
    printf("stress: destination == source (layout, pages, totals, digest, control) in %d of %d runs\n", passed, runs);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
