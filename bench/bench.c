/*
 * bench/bench.c - sevpeb performance suite (issue 6).
 *
 * One process links the shipped Embedded-Swift archive (libsevpeb.a, through
 * pkg-config) and QEMU's own bitmap code (util/bitmap.c + util/bitops.c,
 * compiled from the QEMU source at bench time with gcc -O2), and measures
 * every workload side by side: each repetition times the peer and sevpeb
 * back to back (alternating which goes first), so a ratio is taken from one
 * pair of runs on the same machine state. Figures are min/median/max over
 * the repetitions.
 *
 *   bench [--quick] [--json FILE]      wall-clock suite
 *   bench --ic                          instruction-count mode (run under
 *                                       valgrind --tool=callgrind
 *                                       --instr-atstart=no): each key op once
 *                                       for the peer and for sevpeb, each
 *                                       between CALLGRIND toggles + a dump
 *
 * Bitmap convention everywhere: bit = 1 private, 0 shared (as AMD's KVM
 * bitmap and sevpeb_get_bitmap).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <valgrind/callgrind.h>
#define XXH_INLINE_ALL          /* the payload checksum alone, old (XXH64) and new (XXH3), as the library builds it */
#include <xxhash.h>

#include <sevpeb.h>
#include "qemu_peer.h"

/* ------------------------------------------------------------------------ */
/* utilities                                                                 */

static int quick;
static FILE *js;            /* results JSON */
static int js_first = 1;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    /* xorshift64* */
    uint64_t x = rng_state;
    x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}
static void rnd_seed(uint64_t s) { rng_state = s ? s : 1; }

static void die(const char *what, long long rc)
{
    fprintf(stderr, "bench: %s failed: %lld (%s) %s\n", what, rc,
            rc < 0 ? sevpeb_strerror((int)rc) : "", sevpeb_last_error());
    exit(1);
}
#define CK(call) do { long long _r = (long long)(call); if (_r < 0) die(#call, _r); } while (0)

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) { fprintf(stderr, "bench: out of memory (%zu bytes)\n", n); exit(1); }
    memset(p, 0, n);  /* pre-fault */
    return p;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct { double min, med, max; int n; } mmm;

static mmm summarize(double *v, int n)
{
    mmm r = {0, 0, 0, n};
    if (n == 0) return r;
    double *c = malloc(sizeof(double) * n);
    memcpy(c, v, sizeof(double) * n);
    qsort(c, n, sizeof(double), cmp_d);
    r.min = c[0]; r.max = c[n - 1];
    r.med = n % 2 ? c[n / 2] : (c[n / 2 - 1] + c[n / 2]) / 2;
    free(c);
    return r;
}

/* ------------------------------------------------------------------------ */
/* JSON records                                                              */

static void js_begin(const char *id, const char *group, const char *title, const char *unit)
{
    fprintf(js, "%s\n  {\"id\": \"%s\", \"group\": \"%s\", \"title\": \"%s\", \"unit\": \"%s\"",
            js_first ? "" : ",", id, group, title, unit);
    js_first = 0;
}
static void js_mmm(const char *key, mmm m)
{
    fprintf(js, ", \"%s\": [%.6g, %.6g, %.6g]", key, m.min, m.med, m.max);
}
static void js_num(const char *key, double v) { fprintf(js, ", \"%s\": %.9g", key, v); }
static void js_str(const char *key, const char *v) { fprintf(js, ", \"%s\": \"%s\"", key, v); }
static void js_end(void) { fprintf(js, "}"); fflush(js); }

static void show(const char *id, const char *unit, const char *who, mmm m)
{
    printf("  %-34s %-9s %-7s min %12.4g  med %12.4g  max %12.4g\n", id, who, unit, m.min, m.med, m.max);
    fflush(stdout);
}

/*
 * Side by side: each repetition runs peer() then sev() (or the reverse on
 * odd repetitions). scale divides each time (e.g. per call); unit "ns" or
 * "us" or "ms". Writes one record with peer, sevpeb and ratio (sevpeb/peer)
 * and returns the ratio summary.
 */
typedef void (*op_fn)(void *);
static mmm paired(const char *id, const char *group, const char *title, const char *peer_name,
                  op_fn peer, void *pctx, op_fn sev, void *sctx, int reps, double scale,
                  const char *unit, const char *goal, double goal_ratio)
{
    double div = !strcmp(unit, "ns") ? 1 : !strcmp(unit, "us") ? 1e3 : 1e6;
    double *tp = malloc(sizeof(double) * reps), *ts = malloc(sizeof(double) * reps),
           *tr = malloc(sizeof(double) * reps);
    /* one untimed warm-up of each */
    peer(pctx); sev(sctx);
    for (int r = 0; r < reps; r++) {
        uint64_t a, b, c;
        if (r & 1) {
            a = now_ns(); sev(sctx); b = now_ns(); peer(pctx); c = now_ns();
            ts[r] = (double)(b - a); tp[r] = (double)(c - b);
        } else {
            a = now_ns(); peer(pctx); b = now_ns(); sev(sctx); c = now_ns();
            tp[r] = (double)(b - a); ts[r] = (double)(c - b);
        }
        tr[r] = ts[r] / (tp[r] > 0 ? tp[r] : 1);
        tp[r] /= scale * div; ts[r] /= scale * div;
    }
    mmm P = summarize(tp, reps), S = summarize(ts, reps), R = summarize(tr, reps);
    printf("%s: %s\n", id, title);
    show(id, unit, peer_name, P);
    show(id, unit, "sevpeb", S);
    show(id, "x", "ratio", R);
    js_begin(id, group, title, unit);
    js_str("peer_name", peer_name);
    js_mmm("peer", P); js_mmm("sevpeb", S); js_mmm("ratio", R);
    js_num("reps", reps);
    if (goal) { js_str("goal", goal); js_num("goal_ratio", goal_ratio); js_str("met", R.med <= goal_ratio ? "yes" : "no"); }
    js_end();
    free(tp); free(ts); free(tr);
    return R;
}

/* Time one op alone: returns the summary (in unit). */
static mmm timed(op_fn f, void *ctx, int reps, double scale, const char *unit)
{
    double div = !strcmp(unit, "ns") ? 1 : !strcmp(unit, "us") ? 1e3 : 1e6;
    double *t = malloc(sizeof(double) * reps);
    f(ctx);
    for (int r = 0; r < reps; r++) {
        uint64_t a = now_ns();
        f(ctx);
        t[r] = (double)(now_ns() - a) / (scale * div);
    }
    mmm m = summarize(t, reps);
    free(t);
    return m;
}

/* ------------------------------------------------------------------------ */
/* layouts and workloads                                                     */

#define GIB_PAGES (1ull << 18)
#define TIB_PAGES (1ull << 28)

typedef struct {
    uint64_t tib;             /* guest size in TiB */
    uint64_t base[2], pages[2];
    uint64_t total;           /* RAM pages */
    uint64_t nbits;           /* GFN-indexed bitmap size (AMD: sized by the top GFN) */
} layout;

/* memslots [0, 2 GiB) and [4 GiB, N TiB + 2 GiB) */
static layout mk_layout(uint64_t tib)
{
    layout L;
    L.tib = tib;
    L.base[0] = 0; L.pages[0] = 2 * GIB_PAGES;
    L.base[1] = 4 * GIB_PAGES; L.pages[1] = tib * TIB_PAGES - 2 * GIB_PAGES;
    L.total = tib * TIB_PAGES;
    L.nbits = L.base[1] + L.pages[1];
    return L;
}

static uint64_t ram_index_to_gfn(const layout *L, uint64_t i)
{
    return i < L->pages[0] ? L->base[0] + i : L->base[1] + (i - L->pages[0]);
}

/* A page-state operation as the guest sends it. */
typedef struct { uint64_t gfn, n; int shared; } psc;
typedef struct { psc *v; size_t n, cap; } psc_list;

static void psc_add(psc_list *l, uint64_t gfn, uint64_t n, int shared)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 1024;
        l->v = realloc(l->v, l->cap * sizeof(psc));
    }
    l->v[l->n++] = (psc){gfn, n, shared};
}

/*
 * The typical guest's shared state, as the hypercalls that make it:
 *  - a 1 GiB SWIOTLB bounce buffer in low memory, [1000 MiB, 2024 MiB)
 *    (not 64 MiB aligned, as a real allocation),
 *  - 64 per-vCPU pages (steal time, apf, GHCB) spread through one 64 MiB
 *    region at 300 MiB, one every 1 MiB,
 *  - 16 single pages scattered uniformly over the whole guest (seeded).
 */
static psc_list typical_pscs(const layout *L)
{
    psc_list l = {0};
    psc_add(&l, 1000 * 256, GIB_PAGES, 1);
    for (int i = 0; i < 64; i++) psc_add(&l, 300 * 256 + (uint64_t)i * 256 + 3, 1, 1);
    rnd_seed(0x5eb0001 + L->tib);
    for (int i = 0; i < 16; i++) psc_add(&l, ram_index_to_gfn(L, rnd() % L->total), 1, 1);
    return l;
}

/*
 * OVMF-like boot storm: ~19.5K page-state calls (docs/SOURCES.md §6: 19,479 page
 * encryption status hypercalls in one SEV boot, ~18K from OVMF's DMA
 * allocate/free), as allocate (shared) / free (private) pairs of 1..16
 * pages (mostly 1-4) in a 16 MiB DMA area below 16 MiB, up to 8 outstanding.
 */
static psc_list storm_pscs(void)
{
    psc_list l = {0};
    rnd_seed(0xb0075);
    uint64_t out_g[8], out_n[8];
    int nout = 0;
    while (l.n < 19500) {
        if (nout == 8 || (nout > 0 && rnd() % 2)) {
            int k = (int)(rnd() % nout);
            psc_add(&l, out_g[k], out_n[k], 0);
            out_g[k] = out_g[nout - 1]; out_n[k] = out_n[nout - 1]; nout--;
        } else {
            uint64_t r = rnd() % 16;
            uint64_t n = r < 10 ? 1 + r % 4 : 1 + rnd() % 16;
            uint64_t g = 0x1000 + rnd() % (0x1000 - 16);  /* [16 MiB, 32 MiB) */
            psc_add(&l, g, n, 1);
            out_g[nout] = g; out_n[nout] = n; nout++;
        }
    }
    while (nout > 0) { nout--; psc_add(&l, out_g[nout], out_n[nout], 0); }
    return l;
}

static sevpeb_tracker *mk_tracker(const layout *L)
{
    sevpeb_tracker *t;
    CK(sevpeb_tracker_create(0, &t));
    CK(sevpeb_slot_add(t, L->base[0], L->pages[0]));
    CK(sevpeb_slot_add(t, L->base[1], L->pages[1]));
    return t;
}

static unsigned long *mk_qbitmap(const layout *L)
{
    size_t words = (L->nbits + 63) / 64;
    unsigned long *m = xmalloc(words * 8);
    memset(m, 0xff, words * 8);
    return m;
}

static void apply_sev(sevpeb_tracker *t, const psc_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        int64_t r = sevpeb_map_gpa_range(t, l->v[i].gfn << 12, l->v[i].n,
                                         l->v[i].shared ? 0 : SEVPEB_MAP_GPA_RANGE_ENCRYPTED);
        if (r) die("sevpeb_map_gpa_range", r);
    }
}
static void apply_q(unsigned long *m, const psc_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].shared) peer_clear(m, (long)l->v[i].gfn, (long)l->v[i].n);
        else peer_set(m, (long)l->v[i].gfn, (long)l->v[i].n);
    }
}

/* The same with QEMU's thread-safe bitmap_set_atomic / bitmap_clear_atomic
 * (clear_bit_atomic for one page): the peer for a bitmap that vCPU threads
 * update without a lock, as sevpeb's callers do. */
static void apply_qa(unsigned long *m, const psc_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        if (l->v[i].shared) peer_clear_atomic(m, (long)l->v[i].gfn, (long)l->v[i].n);
        else peer_set_atomic(m, (long)l->v[i].gfn, (long)l->v[i].n);
    }
}

/* Worst case: random bits in every slot (every chunk mixed). */
static void apply_random(sevpeb_tracker *t, unsigned long *m, const layout *L, uint64_t seed)
{
    rnd_seed(seed);
    for (int s = 0; s < 2; s++) {
        size_t words = (L->pages[s] + 63) / 64;
        uint64_t *buf = malloc(words * 8);
        for (size_t i = 0; i < words; i++) buf[i] = rnd();
        CK(sevpeb_set_bitmap(t, L->base[s], L->pages[s], (const uint8_t *)buf, words * 8));
        if (m) {
            /* base is a multiple of 64: word copy */
            unsigned long *dst = m + L->base[s] / 64;
            memcpy(dst, buf, (L->pages[s] / 64) * 8);
            if (L->pages[s] % 64) {
                unsigned long lm = (1ul << (L->pages[s] % 64)) - 1;
                dst[L->pages[s] / 64] = (dst[L->pages[s] / 64] & ~lm) | (buf[L->pages[s] / 64] & lm);
            }
        }
        free(buf);
    }
}

/* ------------------------------------------------------------------------ */
/* AMD's stream formats (docs/SOURCES.md §4.3, §4.5): faithful encoders            */

/*
 * v1 (branch sev-migration-v1): sent once at ram_save_complete:
 *   be64 page header | be32 RAM_SAVE_ENCRYPTED_BITMAP |
 *   per KVM memslot: be32 CONTINUE, be64 base_gpa, be64 npages,
 *                    be64 bmap_size = ALIGN(npages, 64) / 8, raw bitmap |
 *   be32 END
 * (The RAMBlock idstr after the page header is left out: it is not there
 * when RAM_SAVE_FLAG_CONTINUE is set.)
 */
static inline void put_be32(uint8_t **p, uint32_t v) { v = __builtin_bswap32(v); memcpy(*p, &v, 4); *p += 4; }
static inline void put_be64(uint8_t **p, uint64_t v) { v = __builtin_bswap64(v); memcpy(*p, &v, 8); *p += 8; }

static size_t amd_v1_size(const layout *L)
{
    size_t n = 8 + 4 + 4;
    for (int s = 0; s < 2; s++) n += 4 + 24 + ((L->pages[s] + 63) / 64) * 8;
    return n;
}

/* Encode from a GFN-indexed bitmap (what KVM_GET_PAGE_ENC_BITMAP returns). */
static size_t amd_v1_encode(const layout *L, const unsigned long *m, uint8_t *out)
{
    uint8_t *p = out;
    put_be64(&p, 0x100 /* RAM_SAVE_FLAG_ENCRYPTED_DATA */);
    put_be32(&p, 2);
    for (int s = 0; s < 2; s++) {
        uint64_t bs = ((L->pages[s] + 63) / 64) * 8;
        put_be32(&p, 1);
        put_be64(&p, L->base[s] << 12);
        put_be64(&p, L->pages[s]);
        put_be64(&p, bs);
        memcpy(p, m + L->base[s] / 64, bs);
        p += bs;
    }
    put_be32(&p, 2);
    return (size_t)(p - out);
}

/*
 * v4 (branches sev_live_migration_v4*): a sorted list of shared regions
 * [gfn_start, gfn_end) kept by QEMU from KVM_HC_MAP_GPA_RANGE exits, sent
 * once at ram_save_complete as
 *   be64 page header | be32 RAM_SAVE_SHARED_REGIONS_LIST |
 *   per region: be32 CONT, be32 gfn_start, be32 gfn_end | be32 END
 * GFNs are truncated to 32 bits. The list model below follows docs/SOURCES.md
 * §4.5: add ignores a range inside one entry, extends an entry whose
 * [start, end] holds the new start (no merge with later entries), else
 * inserts before the first entry ending at or after start; remove trims or
 * splits. Memory: a node is {ulong start, end; QTAILQ_ENTRY} = 32 bytes.
 */
typedef struct { uint64_t s, e; } region;
typedef struct { region *v; size_t n, cap; } amd_list;

static void al_insert(amd_list *l, size_t at, uint64_t s, uint64_t e)
{
    if (l->n == l->cap) { l->cap = l->cap ? 2 * l->cap : 64; l->v = realloc(l->v, l->cap * sizeof(region)); }
    memmove(l->v + at + 1, l->v + at, (l->n - at) * sizeof(region));
    l->v[at] = (region){s, e};
    l->n++;
}

static void al_add(amd_list *l, uint64_t s, uint64_t e)
{
    for (size_t i = 0; i < l->n; i++) {
        region *p = &l->v[i];
        if (p->s <= s && e <= p->e) return;              /* contained */
        if (p->s <= s && s <= p->e) { p->e = e; return; } /* forward merge */
        if (p->e >= s) { al_insert(l, i, s, e); return; }
    }
    al_insert(l, l->n, s, e);
}

static void al_remove(amd_list *l, uint64_t s, uint64_t e)
{
    for (size_t i = 0; i < l->n;) {
        region *p = &l->v[i];
        if (p->e <= s || p->s >= e) { i++; continue; }
        if (s <= p->s && p->e <= e) {                     /* covered: drop */
            memmove(l->v + i, l->v + i + 1, (l->n - i - 1) * sizeof(region));
            l->n--;
            continue;
        }
        if (p->s < s && e < p->e) {                       /* split */
            uint64_t oe = p->e;
            p->e = s;
            al_insert(l, i + 1, e, oe);
            return;
        }
        if (p->s < s) p->e = s; else p->s = e;            /* trim */
        i++;
    }
}

static void apply_amd(amd_list *l, const psc_list *ops)
{
    for (size_t i = 0; i < ops->n; i++) {
        if (ops->v[i].shared) al_add(l, ops->v[i].gfn, ops->v[i].gfn + ops->v[i].n);
        else al_remove(l, ops->v[i].gfn, ops->v[i].gfn + ops->v[i].n);
    }
}

static size_t amd_v4_size_n(size_t nregions) { return 8 + 4 + 12 * nregions + 4; }

/* Does any region need more than 32 bits of GFN (v4 cannot carry it)? */
static int amd_v4_truncates(const amd_list *l)
{
    for (size_t i = 0; i < l->n; i++) if (l->v[i].e > 0xffffffffull) return 1;
    return 0;
}

/* Number of maximal shared runs (zero runs) of the GFN bitmap over the slots. */
static uint64_t count_runs_q(const layout *L, const unsigned long *m)
{
    uint64_t runs = 0;
    for (int s = 0; s < 2; s++) {
        unsigned long end = L->base[s] + L->pages[s], i = L->base[s];
        while ((i = peer_find_next_zero_bit(m, end, i)) < end) {
            runs++;
            i = peer_find_next_bit(m, end, i);
        }
    }
    return runs;
}

/* ------------------------------------------------------------------------ */
/* stream buffers                                                            */

typedef struct { uint8_t *p; size_t len, cap; } wbuf;

static int wbuf_write(void *opaque, const uint8_t *buf, size_t len)
{
    wbuf *w = opaque;
    if (w->len + len > w->cap) return -ENOSPC;
    memcpy(w->p + w->len, buf, len);
    w->len += len;
    return 0;
}

typedef struct { const uint8_t *p; size_t off, len; } rbuf;

static int rbuf_read(void *opaque, uint8_t *buf, size_t len)
{
    rbuf *r = opaque;
    if (r->off + len > r->len) return -ENODATA;
    memcpy(buf, r->p + r->off, len);
    r->off += len;
    return 0;
}

static int null_write(void *opaque, const uint8_t *buf, size_t len)
{
    (void)buf;
    *(size_t *)opaque += len;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* operations (closures)                                                     */

typedef struct {
    const layout *L;
    sevpeb_tracker *t;
    unsigned long *m;
    const psc_list *ops;
    uint8_t *dst;
    size_t dst_len;
    wbuf *w;
    uint64_t gfn, n;
    uint64_t gfn2;   /* a page of a uniform private chunk (single_noop) */
    int64_t iters;
    volatile uint64_t sink;
} ctx;

/*
 * Routing lookup, as QEMU's RAM saver asks it for every page it sends
 * (sev_peb_route_lookup, docs/QEMU.md "Routing"): an out-of-line call that
 * answers from a cached window of 512 page states and fetches the next
 * window with one sevpeb_get_bitmap call. Walks c->n pages from c->gfn.
 */
#define ROUTE_WORDS 8
typedef struct { uint64_t window, bits[ROUTE_WORDS]; int valid; } route_cache;
static __attribute__((noinline)) int route_lookup(route_cache *rc, sevpeb_tracker *t, uint64_t gfn)
{
    uint64_t win = gfn / (64 * ROUTE_WORDS);
    if (!rc->valid || rc->window != win) {
        CK(sevpeb_get_bitmap(t, win * 64 * ROUTE_WORDS, 64 * ROUTE_WORDS, (uint8_t *)rc->bits, sizeof(rc->bits)));
        rc->window = win; rc->valid = 1;
    }
    return (int)((rc->bits[(gfn / 64) % ROUTE_WORDS] >> (gfn & 63)) & 1);
}
static void op_q_route(void *c_) { ctx *c = c_; c->sink = peer_walk_test_bit(c->m, (unsigned long)c->gfn, (unsigned long)c->n); }
static void op_s_route(void *c_)
{
    ctx *c = c_;
    route_cache rc = {0};
    uint64_t sum = 0;
    for (uint64_t i = 0; i < c->n; i++) sum += (uint64_t)route_lookup(&rc, c->t, c->gfn + i);
    c->sink = sum;
}

static void op_q_storm(void *c_) { ctx *c = c_; apply_q(c->m, c->ops); }
static void op_qa_storm(void *c_) { ctx *c = c_; apply_qa(c->m, c->ops); }
static void op_s_storm(void *c_) { ctx *c = c_; apply_sev(c->t, c->ops); }

/* single page toggles at gfn (in a mixed chunk): iters pairs */
static void op_q_single(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++) {
        peer_clear(c->m, (long)c->gfn, 1);
        peer_set(c->m, (long)c->gfn, 1);
    }
}
static void op_qa_single(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++) {
        peer_clear_atomic(c->m, (long)c->gfn, 1);
        peer_set_atomic(c->m, (long)c->gfn, 1);
    }
}
static void op_s_single(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++) {
        sevpeb_map_gpa_range(c->t, c->gfn << 12, 1, 0);
        sevpeb_map_gpa_range(c->t, c->gfn << 12, 1, SEVPEB_MAP_GPA_RANGE_ENCRYPTED);
    }
}
/* The floor of any locked design: an uncontended pthread mutex lock+unlock
 * around QEMU's own atomic bit op (what a mutex-guarded tracker pays before
 * it does any work of its own). */
static pthread_mutex_t floor_mu = PTHREAD_MUTEX_INITIALIZER;
static void op_floor_single(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++) {
        pthread_mutex_lock(&floor_mu);
        peer_clear_atomic(c->m, (long)c->gfn, 1);
        pthread_mutex_unlock(&floor_mu);
        pthread_mutex_lock(&floor_mu);
        peer_set_atomic(c->m, (long)c->gfn, 1);
        pthread_mutex_unlock(&floor_mu);
    }
}
/* The floor of the gated (lock-free) design the library uses: announce in a
 * per-thread counter, check the gate, the atomic op, leave: three
 * lock-prefixed RMWs against the peer's one. */
static struct { _Alignas(64) long inside; _Alignas(64) int closed; } floor_gate;
static void op_gate_floor_single(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++) {
        __atomic_fetch_add(&floor_gate.inside, 1, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&floor_gate.closed, __ATOMIC_SEQ_CST)) peer_clear_atomic(c->m, (long)c->gfn, 1);
        __atomic_fetch_sub(&floor_gate.inside, 1, __ATOMIC_RELEASE);
        __atomic_fetch_add(&floor_gate.inside, 1, __ATOMIC_SEQ_CST);
        if (!__atomic_load_n(&floor_gate.closed, __ATOMIC_SEQ_CST)) peer_set_atomic(c->m, (long)c->gfn, 1);
        __atomic_fetch_sub(&floor_gate.inside, 1, __ATOMIC_RELEASE);
    }
}
/* set_range on a uniform private chunk that stays private: a no-op update */
static void op_s_single_noop(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++) {
        sevpeb_set_range(c->t, c->gfn2, 1, 1);
        sevpeb_set_range(c->t, c->gfn2, 1, 1);
    }
}
static void op_s_single_setrange(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++) {
        sevpeb_set_range(c->t, c->gfn, 1, 0);
        sevpeb_set_range(c->t, c->gfn, 1, 1);
    }
}

/* large range: [gfn, gfn+n) shared then private */
static void op_q_large(void *c_) { ctx *c = c_; peer_clear(c->m, (long)c->gfn, (long)c->n); peer_set(c->m, (long)c->gfn, (long)c->n); }
static void op_s_large(void *c_)
{
    ctx *c = c_;
    CK(sevpeb_set_range(c->t, c->gfn, c->n, 0));
    CK(sevpeb_set_range(c->t, c->gfn, c->n, 1));
}

/* count shared pages over every slot */
static void op_q_count(void *c_)
{
    ctx *c = c_;
    uint64_t sh = 0;
    for (int s = 0; s < 2; s++)
        sh += c->L->pages[s] - (uint64_t)peer_count_one(c->m, (long)c->L->base[s], (long)c->L->pages[s]);
    c->sink = sh;
}
static void op_s_count(void *c_)
{
    ctx *c = c_;
    uint64_t sh = 0;
    for (int s = 0; s < 2; s++) {
        int64_t r = sevpeb_count_shared(c->t, c->L->base[s], c->L->pages[s]);
        if (r < 0) die("count_shared", r);
        sh += (uint64_t)r;
    }
    c->sink = sh;
}

/* enumerate every shared run (find next) */
static void op_q_find(void *c_) { ctx *c = c_; c->sink = count_runs_q(c->L, c->m); }
static void op_s_find(void *c_)
{
    ctx *c = c_;
    uint64_t from = 0, g, n, runs = 0;
    while (sevpeb_next_shared_run(c->t, from, &g, &n) == 1) { runs++; from = g + n; }
    c->sink = runs;
}
/* the same with sevpeb_shared_runs, 4096 runs per call */
#define RUNS_BATCH 4096
static void op_s_find_batch(void *c_)
{
    ctx *c = c_;
    static sevpeb_run rb[RUNS_BATCH];
    uint64_t from = 0, runs = 0;
    for (;;) {
        int64_t n = sevpeb_shared_runs(c->t, from, rb, RUNS_BATCH);
        if (n < 0) die("shared_runs", n);
        runs += (uint64_t)n;
        if (n < RUNS_BATCH) break;
        from = rb[n - 1].gfn + rb[n - 1].npages;
    }
    c->sink = runs;
}

/* copy out slot 1 (the big one) as a bitmap */
static void op_q_copy(void *c_)
{
    ctx *c = c_;
    peer_copy_with_src_offset((unsigned long *)c->dst, c->m, c->L->base[1], c->L->pages[1]);
}
static void op_s_copy(void *c_)
{
    ctx *c = c_;
    CK(sevpeb_get_bitmap(c->t, c->L->base[1], c->L->pages[1], c->dst, c->dst_len));
}
/* a window copy at an unaligned GFN: 2^15 pages from gfn */
static void op_q_copy_win(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++)
        peer_copy_with_src_offset((unsigned long *)c->dst, c->m, c->gfn + (uint64_t)i * 977, c->n);
}
static void op_s_copy_win(void *c_)
{
    ctx *c = c_;
    for (int64_t i = 0; i < c->iters; i++)
        CK(sevpeb_get_bitmap(c->t, c->gfn + (uint64_t)i * 977, c->n, c->dst, c->dst_len));
}

/* the checksum alone over the raw bitmap of the slots: format v1's XXH64, v2's XXH3-64 */
static void op_xxh64_raw(void *c_)
{
    ctx *c = c_;
    uint64_t h = 0;
    for (int s = 0; s < 2; s++)
        h ^= XXH64(c->m + c->L->base[s] / 64, ((c->L->pages[s] + 63) / 64) * 8, 0);
    c->sink = h;
}
static void op_xxh3_raw(void *c_)
{
    ctx *c = c_;
    uint64_t h = 0;
    for (int s = 0; s < 2; s++)
        h ^= XXH3_64bits(c->m + c->L->base[s] / 64, ((c->L->pages[s] + 63) / 64) * 8);
    c->sink = h;
}

/* full-state encode */
/*
 * The write callback's own share of an encode: the raw bitmap's bytes through
 * wbuf_write (the sink op_s_encode uses) 16 KiB at a time, the encoder's
 * flush size. Small copies use ordinary stores (a read for ownership of every
 * destination line); one 32 MiB memcpy uses glibc's non-temporal stores.
 */
static void op_sink_copy(void *c_)
{
    ctx *c = c_;
    c->w->len = 0;
    for (int s = 0; s < 2; s++) {
        const uint8_t *p = (const uint8_t *)(c->m + c->L->base[s] / 64);
        size_t bs = ((c->L->pages[s] + 63) / 64) * 8;
        for (size_t o = 0; o < bs; o += 16384)
            if (wbuf_write(c->w, p + o, bs - o < 16384 ? bs - o : 16384) < 0) die("sink copy", -ENOSPC);
    }
}

static void op_memcpy_raw(void *c_)
{
    ctx *c = c_;
    /* the raw GFN bitmap of the slots, as one memcpy each */
    size_t off = 0;
    for (int s = 0; s < 2; s++) {
        size_t bs = ((c->L->pages[s] + 63) / 64) * 8;
        memcpy(c->w->p + off, c->m + c->L->base[s] / 64, bs);
        off += bs;
    }
    c->w->len = off;
}
static void op_amd_v1(void *c_) { ctx *c = c_; c->w->len = amd_v1_encode(c->L, c->m, c->w->p); }
static void op_s_encode(void *c_)
{
    ctx *c = c_;
    c->w->len = 0;
    CK(sevpeb_save_setup(c->t, wbuf_write, c->w));
    sevpeb_save_cleanup(c->t);
}

/* ------------------------------------------------------------------------ */
/* KVM exit cost (context for the hypercall path)                            */

/*
 * Round trip of one heavyweight exit to userspace: a real-mode guest doing
 * `out %al, $0x10; jmp .` (KVM_EXIT_IO), KVM_RUN in a loop. Returns ns per
 * exit (median of 5 x 20000), or -1 if /dev/kvm is not usable.
 */
static double kvm_exit_ns(mmm *out)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) return -1;
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) { close(kvm); return -1; }
    uint8_t *mem = mmap(NULL, 0x1000, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    const uint8_t code[] = { 0xe6, 0x10, 0xeb, 0xfc };   /* out %al,$0x10 ; jmp back to out */
    memcpy(mem, code, sizeof code);
    struct kvm_userspace_memory_region reg = { .slot = 0, .guest_phys_addr = 0x1000,
        .memory_size = 0x1000, .userspace_addr = (uint64_t)(uintptr_t)mem };
    int vcpu = -1;
    double res = -1;
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &reg) < 0) goto out;
    vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) goto out;
    int sz = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) goto out;
    struct kvm_sregs sr;
    if (ioctl(vcpu, KVM_GET_SREGS, &sr) < 0) goto out;
    sr.cs.base = 0; sr.cs.selector = 0;
    if (ioctl(vcpu, KVM_SET_SREGS, &sr) < 0) goto out;
    struct kvm_regs rg = { .rip = 0x1000, .rflags = 2 };
    if (ioctl(vcpu, KVM_SET_REGS, &rg) < 0) goto out;
    double v[5];
    for (int r = 0; r < 5; r++) {
        int n = quick ? 5000 : 20000;
        uint64_t a = now_ns();
        for (int i = 0; i < n; i++) {
            if (ioctl(vcpu, KVM_RUN, 0) < 0 || run->exit_reason != KVM_EXIT_IO) goto out;
        }
        v[r] = (double)(now_ns() - a) / n;
    }
    *out = summarize(v, 5);
    res = out->med;
out:
    if (vcpu >= 0) close(vcpu);
    close(vm); close(kvm);
    return res;
}

/* ------------------------------------------------------------------------ */
/* concurrency: 8 updaters while an encoder runs                             */

typedef struct {
    sevpeb_tracker *t;
    const layout *L;
    atomic_int *stop;
    uint64_t seed, count;
} upd_arg;

static void *updater(void *a_)
{
    upd_arg *a = a_;
    uint64_t x = a->seed, n = 0;
    while (!atomic_load_explicit(a->stop, memory_order_relaxed)) {
        for (int k = 0; k < 64; k++) {
            x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
            uint64_t r = x * 0x2545f4914f6cdd1dull;
            uint64_t gfn = ram_index_to_gfn(a->L, r % a->L->total);
            sevpeb_map_gpa_range(a->t, gfn << 12, 1, (r >> 63) ? SEVPEB_MAP_GPA_RANGE_ENCRYPTED : 0);
            n++;
        }
    }
    a->count = n;
    return NULL;
}

static void run_updaters(sevpeb_tracker *t, const layout *L, int nthreads, double seconds,
                         wbuf *w, int with_encoder, double *upd_per_s, mmm *enc_ms)
{
    pthread_t th[16];
    upd_arg args[16];
    atomic_int stop = 0;
    for (int i = 0; i < nthreads; i++) {
        args[i] = (upd_arg){t, L, &stop, 0x1234567ull * (uint64_t)(i + 1), 0};
        pthread_create(&th[i], NULL, updater, &args[i]);
    }
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    double enc[256];
    int ne = 0;
    if (with_encoder) {
        while (now_ns() < end && ne < 256) {
            uint64_t a = now_ns();
            w->len = 0;
            CK(sevpeb_save_setup(t, wbuf_write, w));
            sevpeb_save_cleanup(t);
            enc[ne++] = (double)(now_ns() - a) / 1e6;
        }
    }
    while (now_ns() < end) usleep(1000);
    atomic_store(&stop, 1);
    uint64_t total = 0;
    for (int i = 0; i < nthreads; i++) { pthread_join(th[i], NULL); total += args[i].count; }
    double el = (double)(now_ns() - t0) / 1e9;
    *upd_per_s = (double)total / el;
    if (enc_ms) *enc_ms = summarize(enc, ne);
}

/* scaling: n threads, each toggling single pages of its own 64 MiB chunk   */

typedef struct {
    sevpeb_tracker *t;       /* NULL: the QEMU atomic peer on m */
    unsigned long *m;
    uint64_t base;           /* first GFN of this thread's chunk */
    atomic_int *stop;
    uint64_t count;
} scale_arg;

static void *scale_thread(void *a_)
{
    scale_arg *a = a_;
    uint64_t n = 0, x = a->base | 1;
    while (!atomic_load_explicit(a->stop, memory_order_relaxed)) {
        for (int k = 0; k < 64; k++) {
            x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
            uint64_t gfn = a->base + 1 + (x % 16000);   /* page 0 of the chunk stays shared: mixed */
            if (a->t) {
                sevpeb_map_gpa_range(a->t, gfn << 12, 1, (k & 1) ? SEVPEB_MAP_GPA_RANGE_ENCRYPTED : 0);
            } else if (k & 1) {
                peer_set_atomic(a->m, (long)gfn, 1);
            } else {
                peer_clear_atomic(a->m, (long)gfn, 1);
            }
        }
        n += 64;
    }
    a->count = n;
    return NULL;
}

/* updates/s of n threads on chunks 16 apart in slot 1 (sevpeb if t, else the peer) */
static double run_scaling(sevpeb_tracker *t, unsigned long *m, const layout *L, int n, double seconds)
{
    pthread_t th[16];
    scale_arg args[16];
    atomic_int stop = 0;
    for (int i = 0; i < n; i++) {
        uint64_t base = L->base[1] + (uint64_t)(16 * i + 3) * 16384;
        if (t) sevpeb_map_gpa_range(t, base << 12, 1, 0);
        args[i] = (scale_arg){t, m, base, &stop, 0};
    }
    uint64_t t0 = now_ns();
    for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, scale_thread, &args[i]);
    while (now_ns() - t0 < (uint64_t)(seconds * 1e9)) usleep(1000);
    atomic_store(&stop, 1);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) { pthread_join(th[i], NULL); total += args[i].count; }
    return (double)total / ((double)(now_ns() - t0) / 1e9);
}

/* ------------------------------------------------------------------------ */
/* instruction-count mode                                                    */

#define IC(name, stmt) do { CALLGRIND_START_INSTRUMENTATION; stmt; CALLGRIND_STOP_INSTRUMENTATION; \
                            CALLGRIND_DUMP_STATS_AT(name); } while (0)

static int ic_mode(void)
{
    /* A 4 GiB guest: slots [0, 2 GiB), [4 GiB, 6 GiB) (valgrind is ~50x slower). */
    layout L;
    L.tib = 0;
    L.base[0] = 0; L.pages[0] = 2 * GIB_PAGES; L.base[1] = 4 * GIB_PAGES; L.pages[1] = 2 * GIB_PAGES;
    L.total = 4 * GIB_PAGES; L.nbits = L.base[1] + L.pages[1];
    sevpeb_tracker *t = mk_tracker(&L);
    unsigned long *m = mk_qbitmap(&L);
    psc_list storm = storm_pscs();
    ctx c = { .L = &L, .t = t, .m = m, .ops = &storm };

    /* hypercall-sized updates */
    IC("peer:storm", op_q_storm(&c));
    IC("sevpeb:storm", op_s_storm(&c));
    IC("peer_atomic:storm", op_qa_storm(&c));
    sevpeb_map_gpa_range(t, 0x7777ull << 12, 1, 0);      /* make the chunk mixed first */
    c.gfn = 0x7778; c.iters = 10000;
    IC("peer:single", op_q_single(&c));
    IC("peer_atomic:single", op_qa_single(&c));
    IC("sevpeb:single", op_s_single(&c));
    IC("mutex_floor:single", op_floor_single(&c));
    IC("gate_floor:single", op_gate_floor_single(&c));
    IC("sevpeb_set_range:single", op_s_single_setrange(&c));
    c.gfn2 = 3 * GIB_PAGES / 2;   /* a uniform private chunk */
    IC("sevpeb_noop:single", op_s_single_noop(&c));
    c.gfn = 1000 * 256; c.n = GIB_PAGES;
    IC("peer:large", op_q_large(&c));
    IC("sevpeb:large", op_s_large(&c));

    /* worst case: random bits */
    apply_random(t, m, &L, 42);
    size_t dl = (L.pages[1] + 63) / 64 * 8 + 64;
    c.dst = xmalloc(dl); c.dst_len = dl;
    IC("peer:count", op_q_count(&c));
    IC("sevpeb:count", op_s_count(&c));
    IC("peer:find", op_q_find(&c));
    IC("sevpeb:find", op_s_find(&c));
    IC("sevpeb_batch:find", op_s_find_batch(&c));
    IC("peer:copy", op_q_copy(&c));
    IC("sevpeb:copy", op_s_copy(&c));
    wbuf w = { xmalloc(64 << 20), 0, 64 << 20 };
    c.w = &w;
    IC("memcpy:encode", op_memcpy_raw(&c));
    IC("amd_v1:encode", op_amd_v1(&c));
    IC("sevpeb:encode", op_s_encode(&c));
    IC("xxh64:encode", op_xxh64_raw(&c));
    IC("xxh3:encode", op_xxh3_raw(&c));
    c.w->len = 0;
    CK(sevpeb_save_setup(t, wbuf_write, c.w));
    sevpeb_save_cleanup(t);
    sevpeb_tracker *d = mk_tracker(&L);
    rbuf r = { w.p, 0, w.len };
    IC("sevpeb:decode", { CK(sevpeb_load_setup(d)); CK(sevpeb_load_state(d, rbuf_read, &r, 1)); sevpeb_load_cleanup(d); });
    sevpeb_tracker_destroy(d);
    sevpeb_tracker_destroy(t);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* main suite                                                                */

static void section(const char *s) { printf("\n== %s ==\n", s); fflush(stdout); }

int main(int argc, char **argv)
{
    const char *json = "bench/out/results.json";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--ic")) return ic_mode();
        else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
        else { fprintf(stderr, "usage: bench [--quick] [--json FILE] | --ic\n"); return 2; }
    }
    js = fopen(json, "w");
    if (!js) { perror(json); return 1; }
    fprintf(js, "{\"quick\": %d, \"sevpeb_version\": \"%s\", \"figures\": [", quick, sevpeb_version_string());
    int R = quick ? 5 : 25;   /* repetitions of each paired measurement */

    layout L1 = mk_layout(1);
    psc_list typ = typical_pscs(&L1), storm = storm_pscs();

    /* ---------------- typical 1 TiB guest ---------------- */
    section("typical 1 TiB guest");
    sevpeb_tracker *t = mk_tracker(&L1);
    unsigned long *m = mk_qbitmap(&L1);
    apply_sev(t, &typ);
    apply_q(m, &typ);
    amd_list al = {0};
    apply_amd(&al, &typ);
    size_t dl = (L1.pages[1] + 63) / 64 * 8 + 64;
    uint8_t *dst = xmalloc(dl);
    wbuf w = { xmalloc(96u << 20), 0, 96u << 20 };
    ctx c = { .L = &L1, .t = t, .m = m, .ops = &storm, .dst = dst, .dst_len = dl, .w = &w };

    paired("storm", "update", "boot storm: 19.5K page-state calls (OVMF-like allocate/free pairs)",
           "QEMU bitmap_set/clear", op_q_storm, &c, op_s_storm, &c, R, 19500, "ns", "<= 1.0x QEMU", 1.0);
    paired("storm_atomic", "update", "boot storm: 19.5K page-state calls vs QEMU's thread-safe bitmap_set_atomic/test_and_clear_atomic",
           "QEMU bitmap_set_atomic/test_and_clear_atomic", op_qa_storm, &c, op_s_storm, &c, R, 19500, "ns", "<= 1.0x QEMU", 1.0);
    sevpeb_map_gpa_range(t, 0x7777ull << 12, 1, 0);
    peer_clear(m, 0x7777, 1);
    c.gfn = 0x7778; c.iters = quick ? 200000 : 1000000;
    paired("single", "update", "single-page update in a mixed chunk (map_gpa_range vs bitmap_set/clear)",
           "QEMU bitmap_set/clear", op_q_single, &c, op_s_single, &c, R, 2.0 * c.iters, "ns", "<= 1.0x QEMU", 1.0);
    paired("single_atomic", "update", "single-page update vs QEMU's thread-safe bitmap_set_atomic/clear_bit_atomic",
           "QEMU bitmap_set_atomic/clear_bit_atomic", op_qa_single, &c, op_s_single, &c, R, 2.0 * c.iters, "ns",
           "<= 1.0x QEMU", 1.0);
    paired("single_set_range", "update", "single-page sevpeb_set_range (no hypercall decoding)",
           "QEMU bitmap_set/clear", op_q_single, &c, op_s_single_setrange, &c, R, 2.0 * c.iters, "ns", NULL, 0);
    paired("mutex_floor", "update", "floor of a locked design: uncontended pthread mutex lock+unlock around bitmap_set_atomic/clear_bit_atomic",
           "QEMU bitmap_set_atomic/clear_bit_atomic", op_qa_single, &c, op_floor_single, &c, R, 2.0 * c.iters, "ns", NULL, 0);
    paired("gate_floor", "update", "floor of the gated design: per-thread counter in, gate check, bitmap_set_atomic/clear_bit_atomic, counter out",
           "QEMU bitmap_set_atomic/clear_bit_atomic", op_qa_single, &c, op_gate_floor_single, &c, R, 2.0 * c.iters, "ns", NULL, 0);
    c.gfn2 = L1.base[1] + L1.pages[1] / 2 + 7;   /* far from the typical state's shared pages */
    paired("single_noop", "update", "single-page sevpeb_set_range that changes nothing (uniform private chunk)",
           "QEMU bitmap_set_atomic/clear_bit_atomic", op_qa_single, &c, op_s_single_noop, &c, R, 2.0 * c.iters, "ns", NULL, 0);
    {
        c.iters = quick ? 200000 : 1000000;
        mmm u = timed(op_s_single, &c, R, 2.0 * c.iters, "ns");
        js_begin("update_ns", "update", "single-page hypercall update, uncontended (sevpeb_map_gpa_range)", "ns");
        js_mmm("sevpeb", u); js_str("goal", "<= 100 ns"); js_num("goal_value", 100);
        js_str("met", u.med <= 100 ? "yes" : "no"); js_end();
        show("update_ns", "ns", "sevpeb", u);
        mmm k = {0, 0, 0, 0};
        double kv = kvm_exit_ns(&k);
        js_begin("kvm_exit", "update", "KVM exit to userspace and back (KVM_EXIT_IO round trip, this host)", "ns");
        if (kv > 0) js_mmm("measured", k);
        js_str("literature", "Sean Christopherson: ~10k-50k cycles per userspace round trip (docs/SOURCES.md section 6), i.e. ~4-20 us");
        js_end();
        if (kv > 0) show("kvm_exit", "ns", "KVM", k);
    }
    c.gfn = 1000 * 256; c.n = GIB_PAGES;
    paired("large_1g", "update", "1 GiB range set shared then private (bounce buffer)",
           "QEMU bitmap_set/clear", op_q_large, &c, op_s_large, &c, R, 2, "us", "<= 1.0x QEMU", 1.0);
    c.gfn = L1.base[1]; c.n = L1.pages[1];
    paired("large_slot", "update", "whole 1 TiB slot set shared then private",
           "QEMU bitmap_set/clear", op_q_large, &c, op_s_large, &c, quick ? 3 : 7, 2, "ms", "<= 1.0x QEMU", 1.0);
    paired("count_typ", "query", "count shared pages, whole guest (typical)",
           "QEMU bitmap_count_one", op_q_count, &c, op_s_count, &c, R, 1, "us", "<= 1.0x QEMU", 1.0);
    paired("find_typ", "query", "enumerate all shared runs (find next), typical",
           "QEMU find_next_zero_bit/find_next_bit", op_q_find, &c, op_s_find, &c, R, 1, "us", "<= 1.0x QEMU", 1.0);
    paired("find_batch_typ", "query", "enumerate all shared runs (sevpeb_shared_runs, 4096 a call), typical",
           "QEMU find_next_zero_bit/find_next_bit", op_q_find, &c, op_s_find_batch, &c, R, 1, "us", "<= 1.0x QEMU", 1.0);
    paired("copy_typ", "query", "copy out the 1 TiB slot as a bitmap (32 MiB), typical",
           "QEMU bitmap_copy_with_src_offset", op_q_copy, &c, op_s_copy, &c, R, 1, "ms", "<= 1.0x QEMU", 1.0);
    c.gfn = L1.base[1]; c.n = 1 << 22;
    paired("route_typ", "query", "routing lookup per page sent: 16 GiB walked page by page (cached 512-page window vs QEMU test_bit), typical",
           "QEMU test_bit", op_q_route, &c, op_s_route, &c, R, (double)c.n, "ns", NULL, 0);
    {
        mmm u = timed(op_s_route, &c, R, (double)c.n, "ns");
        js_begin("route_ns", "query", "routing lookup per page sent (sev_peb_route_lookup's cached window), typical", "ns");
        js_mmm("sevpeb", u); js_str("goal", "<= 5 ns per page"); js_num("goal_value", 5);
        js_str("met", u.med <= 5 ? "yes" : "no"); js_end();
        show("route_ns", "ns", "sevpeb", u);
    }
    c.gfn = 300 * 256 + 5; c.n = 1 << 15; c.iters = 64;
    paired("copy_win_typ", "query", "copy out 128 MiB windows (2^15 pages) at unaligned GFNs, typical",
           "QEMU bitmap_copy_with_src_offset", op_q_copy_win, &c, op_s_copy_win, &c, R, 64, "us", "<= 1.0x QEMU", 1.0);

    /* wire size and memory, typical */
    {
        size_t got = 0;
        CK(sevpeb_save_setup(t, null_write, &got));
        int done = 0;
        while (!done) { int r = sevpeb_save_iterate(t, null_write, &got, 0); if (r < 0) die("iterate", r); done = r; }
        size_t before = got;
        CK(sevpeb_save_complete(t, null_write, &got));
        sevpeb_save_stats st = { .size = sizeof st };
        CK(sevpeb_save_get_stats(t, &st));
        sevpeb_save_cleanup(t);
        js_begin("wire_typ", "wire", "full state on the wire, typical 1 TiB guest (START payload; whole migration in total)", "bytes");
        js_num("sevpeb", (double)st.setup_bytes);
        js_num("sevpeb_total", (double)got);
        js_num("complete_bytes", (double)(got - before));
        js_num("amd_v1", (double)amd_v1_size(&L1));
        js_num("amd_v4", (double)amd_v4_size_n(al.n));
        js_num("amd_v4_regions", (double)al.n);
        js_str("goal", "<= 4 KiB"); js_num("goal_value", 4096);
        js_str("met", st.setup_bytes <= 4096 ? "yes" : "no");
        js_end();
        printf("  wire typical: sevpeb START %llu B (whole migration %zu B), AMD v1 %zu B, AMD v4 %zu B (%zu regions)\n",
               (unsigned long long)st.setup_bytes, got, amd_v1_size(&L1), amd_v4_size_n(al.n), al.n);
        uint64_t mb = sevpeb_memory_bytes(t);
        js_begin("mem_typ", "memory", "tracker memory, typical 1 TiB guest", "bytes");
        js_num("sevpeb", (double)mb);
        js_num("qemu_bitmap", (double)((L1.nbits + 63) / 64 * 8));
        js_num("amd_v4_list", (double)(al.n * 32));
        js_str("goal", "<= 64 KiB"); js_num("goal_value", 65536);
        js_str("met", mb <= 65536 ? "yes" : "no");
        js_end();
        printf("  memory typical: sevpeb %llu B, QEMU bitmap %llu B\n", (unsigned long long)mb,
               (unsigned long long)((L1.nbits + 63) / 64 * 8));
    }

    /* storm wire size (AMD v4 list after the storm is the typical one) */
    {
        amd_list a2 = {0};
        apply_amd(&a2, &typ);
        apply_amd(&a2, &storm);
        js_begin("storm_amd_list", "wire", "AMD v4 list entries after typical state + boot storm", "regions");
        js_num("amd_v4_regions", (double)a2.n);
        js_end();
        free(a2.v);
    }

    /* ---------------- completion at every size ---------------- */
    section("completion (downtime) at 1, 16, 64 TiB (typical state)");
    uint64_t sizes[3] = { 1, 16, 64 };
    int nsizes = quick ? 2 : 3;
    for (int si = 0; si < nsizes; si++) {
        layout L = mk_layout(sizes[si]);
        sevpeb_tracker *tt = mk_tracker(&L);
        psc_list tp = typical_pscs(&L);
        apply_sev(tt, &tp);
        amd_list a = {0};
        apply_amd(&a, &tp);
        double idle[32], chg[32];
        size_t idle_b = 0, chg_b = 0, setup_b = 0;
        int reps = quick ? 5 : 11;
        psc_list ch = {0};
        rnd_seed(0xc0ffee + sizes[si]);
        for (int i = 0; i < 1000; i++) psc_add(&ch, ram_index_to_gfn(&L, rnd() % L.total), 1, 1);
        psc_list back = ch;
        back.v = malloc(ch.n * sizeof(psc));
        for (size_t i = 0; i < ch.n; i++) { back.v[i] = ch.v[i]; back.v[i].shared = 0; }
        double setup_us = 0;
        for (int r = 0; r < reps; r++) {
            size_t got = 0;
            uint64_t a0 = now_ns();
            CK(sevpeb_save_setup(tt, null_write, &got));
            setup_us = (double)(now_ns() - a0) / 1e3;
            setup_b = got;
            int done = 0;
            while (!done) { int rr = sevpeb_save_iterate(tt, null_write, &got, 0); if (rr < 0) die("iterate", rr); done = rr; }
            size_t b0 = got;
            uint64_t a = now_ns();
            CK(sevpeb_save_complete(tt, null_write, &got));
            idle[r] = (double)(now_ns() - a) / 1e3;
            idle_b = got - b0;
            sevpeb_save_cleanup(tt);
            /* with 1,000 scattered changes since the last iterate */
            got = 0;
            CK(sevpeb_save_setup(tt, null_write, &got));
            done = 0;
            while (!done) { int rr = sevpeb_save_iterate(tt, null_write, &got, 0); if (rr < 0) die("iterate", rr); done = rr; }
            apply_sev(tt, &ch);
            b0 = got;
            a = now_ns();
            CK(sevpeb_save_complete(tt, null_write, &got));
            chg[r] = (double)(now_ns() - a) / 1e3;
            chg_b = got - b0;
            sevpeb_save_cleanup(tt);
            apply_sev(tt, &back);
        }
        mmm I = summarize(idle, reps), C = summarize(chg, reps);
        char id[64], title[160];
        snprintf(id, sizeof id, "complete_idle_%llut", (unsigned long long)sizes[si]);
        snprintf(title, sizeof title, "completion with nothing changed, %llu TiB guest", (unsigned long long)sizes[si]);
        js_begin(id, "completion", title, "us");
        js_mmm("sevpeb", I); js_num("bytes", (double)idle_b); js_num("tib", (double)sizes[si]);
        js_num("amd_v1_bytes", (double)amd_v1_size(&L));
        js_num("amd_v4_bytes", (double)amd_v4_size_n(a.n));
        js_str("amd_v4_truncates", amd_v4_truncates(&a) ? "yes" : "no");
        js_num("setup_bytes", (double)setup_b); js_num("setup_us", setup_us);
        js_num("memory_bytes", (double)sevpeb_memory_bytes(tt));
        js_str("goal", "<= 64 B and <= 100 us");
        js_str("met", (idle_b <= 64 && I.med <= 100) ? "yes" : "no");
        js_end();
        show(id, "us", "sevpeb", I);
        printf("  %s: %zu B (AMD v1 %zu B, v4 %zu B%s); START %zu B in %.0f us; memory %llu B\n", id, idle_b,
               amd_v1_size(&L), amd_v4_size_n(a.n), amd_v4_truncates(&a) ? ", GFNs truncated" : "",
               setup_b, setup_us, (unsigned long long)sevpeb_memory_bytes(tt));
        snprintf(id, sizeof id, "complete_1000_%llut", (unsigned long long)sizes[si]);
        snprintf(title, sizeof title, "completion after 1,000 scattered changes, %llu TiB guest", (unsigned long long)sizes[si]);
        js_begin(id, "completion", title, "us");
        js_mmm("sevpeb", C); js_num("bytes", (double)chg_b); js_num("tib", (double)sizes[si]);
        js_str("goal", "report");
        js_end();
        show(id, "us", "sevpeb", C);
        printf("  %s: %zu B\n", id, chg_b);
        free(ch.v); free(back.v); free(tp.v); free(a.v);
        sevpeb_tracker_destroy(tt);
    }

    /* ---------------- worst case 1 TiB ---------------- */
    section("worst case 1 TiB guest: random bits, every chunk mixed");
    apply_random(t, m, &L1, 7);
    c.t = t; c.m = m;
    paired("count_worst", "query", "count shared pages, whole guest (worst case)",
           "QEMU bitmap_count_one", op_q_count, &c, op_s_count, &c, R, 1, "ms", "<= 1.0x QEMU", 1.0);
    paired("find_worst", "query", "enumerate all shared runs (find next), worst case (~67M runs)",
           "QEMU find_next_zero_bit/find_next_bit", op_q_find, &c, op_s_find, &c, quick ? 3 : 5, 1, "ms", "<= 1.0x QEMU", 1.0);
    paired("find_batch_worst", "query", "enumerate all shared runs (sevpeb_shared_runs, 4096 a call), worst case (~67M runs)",
           "QEMU find_next_zero_bit/find_next_bit", op_q_find, &c, op_s_find_batch, &c, quick ? 3 : 5, 1, "ms",
           "<= 1.0x QEMU", 1.0);
    paired("copy_worst", "query", "copy out the 1 TiB slot as a bitmap (32 MiB), worst case",
           "QEMU bitmap_copy_with_src_offset", op_q_copy, &c, op_s_copy, &c, R, 1, "ms", "<= 1.0x QEMU", 1.0);
    c.gfn = L1.base[1]; c.n = 1 << 22;
    paired("route_worst", "query", "routing lookup per page sent, worst case (every chunk mixed)",
           "QEMU test_bit", op_q_route, &c, op_s_route, &c, R, (double)c.n, "ns", NULL, 0);
    c.gfn = 300 * 256 + 5; c.n = 1 << 15; c.iters = 64;
    paired("copy_win_worst", "query", "copy out 128 MiB windows (2^15 pages) at unaligned GFNs, worst case",
           "QEMU bitmap_copy_with_src_offset", op_q_copy_win, &c, op_s_copy_win, &c, R, 64, "us", "<= 1.0x QEMU", 1.0);
    sevpeb_map_gpa_range(t, 0x7777ull << 12, 1, 0);
    c.gfn = 0x7778; c.iters = quick ? 200000 : 1000000;
    paired("single_worst", "update", "single-page update, worst-case tracker",
           "QEMU bitmap_set/clear", op_q_single, &c, op_s_single, &c, R, 2.0 * c.iters, "ns", "<= 1.0x QEMU", 1.0);

    mmm enc = paired("encode_worst", "encode", "full-state encode, worst case (START payload vs memcpy of the raw bitmap)",
                     "memcpy raw bitmap", op_memcpy_raw, &c, op_s_encode, &c, R, 1, "ms", "<= 1.5x memcpy", 1.5);
    (void)enc;
    paired("sink_copy_worst", "encode", "the write callback's own copy: the raw bitmap through the bench's write callback 16 KiB at a time (the encoder's flush size) vs one memcpy",
           "memcpy raw bitmap", op_memcpy_raw, &c, op_sink_copy, &c, R, 1, "ms", NULL, 0);
    paired("hash_xxh64_worst", "encode", "the checksum alone: XXH64 (format v1) over the 1 TiB raw bitmap vs memcpy of it",
           "memcpy raw bitmap", op_memcpy_raw, &c, op_xxh64_raw, &c, R, 1, "ms", NULL, 0);
    paired("hash_xxh3_worst", "encode", "the checksum alone: XXH3-64 (format v2) over the 1 TiB raw bitmap vs memcpy of it",
           "memcpy raw bitmap", op_memcpy_raw, &c, op_xxh3_raw, &c, R, 1, "ms", NULL, 0);
    paired("encode_worst_amd", "encode", "full-state encode, worst case (sevpeb vs AMD v1 bitmap encoder)",
           "AMD v1 encoder", op_amd_v1, &c, op_s_encode, &c, R, 1, "ms", NULL, 0);
    {
        w.len = 0;
        CK(sevpeb_save_setup(t, wbuf_write, &w));
        sevpeb_save_cleanup(t);
        size_t enc_bytes = w.len;
        uint64_t runs = count_runs_q(&L1, m);
        js_begin("wire_worst", "wire", "full state on the wire, worst case 1 TiB", "bytes");
        js_num("sevpeb", (double)enc_bytes);
        js_num("raw_bitmap", (double)((L1.pages[0] + L1.pages[1]) / 8));
        js_num("amd_v1", (double)amd_v1_size(&L1));
        js_num("amd_v4", (double)amd_v4_size_n(runs));
        js_num("amd_v4_regions", (double)runs);
        js_end();
        printf("  wire worst: sevpeb %zu B, AMD v1 %zu B, AMD v4 >= %zu B (%llu runs)\n", enc_bytes,
               amd_v1_size(&L1), amd_v4_size_n(runs), (unsigned long long)runs);
        uint64_t mb = sevpeb_memory_bytes(t);
        double bpp = (double)mb * 8 / (double)L1.total;
        js_begin("mem_worst", "memory", "tracker memory, worst case 1 TiB (bits per page)", "bits/page");
        js_num("sevpeb", bpp); js_num("bytes", (double)mb);
        js_num("qemu_bitmap", (double)((L1.nbits + 63) / 64 * 8) * 8 / (double)L1.total);
        js_str("goal", "<= 1.01 bits/page"); js_num("goal_value", 1.01);
        js_str("met", bpp <= 1.01 ? "yes" : "no");
        js_end();
        printf("  memory worst: %llu B = %.4f bits/page\n", (unsigned long long)mb, bpp);

        /* decode + apply vs encode */
        sevpeb_tracker *d = mk_tracker(&L1);
        double te[32], td[32], tr2[32];
        int reps = quick ? 3 : 9;
        for (int r = 0; r < reps; r++) {
            uint64_t a = now_ns();
            w.len = 0;
            CK(sevpeb_save_setup(t, wbuf_write, &w));
            sevpeb_save_cleanup(t);
            uint64_t b = now_ns();
            rbuf rb = { w.p, 0, w.len };
            CK(sevpeb_load_setup(d));
            CK(sevpeb_load_state(d, rbuf_read, &rb, 1));
            sevpeb_load_cleanup(d);
            uint64_t e = now_ns();
            te[r] = (double)(b - a) / 1e6; td[r] = (double)(e - b) / 1e6; tr2[r] = td[r] / te[r];
        }
        mmm E = summarize(te, reps), D = summarize(td, reps), Q = summarize(tr2, reps);
        js_begin("decode_worst", "decode", "decode + apply the worst-case START payload vs encoding it", "ms");
        js_str("peer_name", "sevpeb encode");
        js_mmm("peer", E); js_mmm("sevpeb", D); js_mmm("ratio", Q);
        js_str("goal", "decode time <= encode time"); js_num("goal_ratio", 1.0);
        js_str("met", Q.med <= 1.0 ? "yes" : "no");
        js_end();
        printf("decode_worst: encode med %.3f ms, decode med %.3f ms, ratio med %.3f\n", E.med, D.med, Q.med);
        sevpeb_tracker_destroy(d);

        /* concurrency */
        section("8 updater threads while an encoder runs (worst-case state)");
        double secs = quick ? 1.0 : 3.0;
        double u_alone, u_enc, dummy;
        mmm enc_alone, enc_busy;
        run_updaters(t, &L1, 0, secs, &w, 1, &dummy, &enc_alone);
        run_updaters(t, &L1, 8, secs, &w, 0, &u_alone, NULL);
        run_updaters(t, &L1, 8, secs, &w, 1, &u_enc, &enc_busy);
        js_begin("concurrent", "concurrency", "8 threads of single-page updates while a full encode loops (2 cores)", "ms");
        js_num("updates_per_s_alone", u_alone);
        js_num("updates_per_s_with_encoder", u_enc);
        js_mmm("encode_alone", enc_alone);
        js_mmm("encode_busy", enc_busy);
        js_num("encoder_slowdown", enc_busy.med / enc_alone.med);
        js_str("goal", "report");
        js_end();
        printf("  updates/s: %.3g alone, %.3g with encoder; encode med %.2f ms alone, %.2f ms busy (x%.2f)\n",
               u_alone, u_enc, enc_alone.med, enc_busy.med, enc_busy.med / enc_alone.med);
    }

    /* thread scaling: 1, 2, 4, 8 threads, each on its own chunk */
    {
        section("1/2/4/8 threads updating pages of different chunks (typical-state tracker)");
        sevpeb_tracker *st = mk_tracker(&L1);
        unsigned long *sm = mk_qbitmap(&L1);
        double secs = quick ? 0.4 : 1.5;
        static const int ns[] = {1, 2, 4, 8};
        js_begin("scaling", "concurrency", "updates/s of 1, 2, 4, 8 threads, each toggling single pages of its own chunk", "updates/s");
        js_num("cores", (double)sysconf(_SC_NPROCESSORS_ONLN));
        for (int i = 0; i < 4; i++) {
            double us = run_scaling(st, NULL, &L1, ns[i], secs);
            double uq = run_scaling(NULL, sm, &L1, ns[i], secs);
            char k[32];
            snprintf(k, sizeof(k), "sevpeb_%d", ns[i]); js_num(k, us);
            snprintf(k, sizeof(k), "peer_%d", ns[i]); js_num(k, uq);
            printf("  %d thread(s): sevpeb %.3g updates/s, QEMU atomic peer %.3g updates/s\n", ns[i], us, uq);
        }
        js_str("goal", "updates/s grow with threads (report)");
        js_end();
        sevpeb_tracker_destroy(st);
        free(sm);
    }

    /* typical decode vs encode */
    {
        sevpeb_tracker *tt = mk_tracker(&L1), *d = mk_tracker(&L1);
        apply_sev(tt, &typ);
        double te[32], td[32], tr2[32];
        int reps = quick ? 5 : 15;
        for (int r = 0; r < reps; r++) {
            uint64_t a = now_ns();
            w.len = 0;
            CK(sevpeb_save_setup(tt, wbuf_write, &w));
            sevpeb_save_cleanup(tt);
            uint64_t b = now_ns();
            rbuf rb = { w.p, 0, w.len };
            CK(sevpeb_load_setup(d));
            CK(sevpeb_load_state(d, rbuf_read, &rb, 1));
            sevpeb_load_cleanup(d);
            uint64_t e = now_ns();
            te[r] = (double)(b - a) / 1e3; td[r] = (double)(e - b) / 1e3; tr2[r] = td[r] / te[r];
        }
        mmm E = summarize(te, reps), D = summarize(td, reps), Q = summarize(tr2, reps);
        js_begin("decode_typ", "decode", "decode + apply the typical START payload vs encoding it", "us");
        js_str("peer_name", "sevpeb encode");
        js_mmm("peer", E); js_mmm("sevpeb", D); js_mmm("ratio", Q);
        js_str("goal", "decode time <= encode time"); js_num("goal_ratio", 1.0);
        js_str("met", Q.med <= 1.0 ? "yes" : "no");
        js_end();
        printf("decode_typ: encode med %.1f us, decode med %.1f us, ratio med %.3f\n", E.med, D.med, Q.med);
        sevpeb_tracker_destroy(tt); sevpeb_tracker_destroy(d);
    }

    fprintf(js, "\n]}\n");
    fclose(js);
    sevpeb_tracker_destroy(t);
    free(m); free(dst); free(w.p); free(typ.v); free(storm.v); free(al.v);
    printf("\nresults: %s\n", json);
    return 0;
}
