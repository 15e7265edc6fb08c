/*
 * allocfail.c - injected allocation failures through the C ABI.
 *
 * Linked with -Wl,--wrap=calloc,--wrap=malloc,--wrap=posix_memalign (make
 * alloc-check), so every allocation the installed archive makes (its own
 * Mem.calloc, the mutex, the update gate (posix_memalign, 64-aligned), and any
 * other posix_memalign, which the Embedded runtime's
 * swift_allocObject would use for a class instance or a Swift array: the
 * library makes none, so the clean run must count 0 of them, and one added
 * later is failed like the rest) goes through __wrap_* here; the production
 * archive has no hook. A realistic sequence (layout, updates crossing
 * uniform -> mixed, resize/remove, save with iterate/complete, load into
 * staging, seed-dialect sync/push and memory-attribute apply through the
 * interposer's kernel models when preloaded) is run once cleanly to count
 * the allocations, then once per allocation with exactly that one failing
 * (each run in a forked child, so a crash is a finding, not the end).
 * Every call must return its clean result or -ENOMEM; after an -ENOMEM the
 * tracker must equal its state before the call (slots, every bit, totals,
 * digest, control value), and must still migrate correctly afterwards.
 * Under ASan, LSan checks each child for leaks at exit.
 *
 *   allocfail            every allocation failing in turn
 *   allocfail --seed S   additionally 200 runs failing allocations at random (1/8)
 *   allocfail --negative-control   flip a page after each failed call: must FAIL
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testchan.h"
#include "testcheck.h"

/* ---- the allocator hook (this test's link only) --------------------------- */
void *__real_calloc(size_t n, size_t s);
void *__real_malloc(size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);

static int armed;               /* only allocations inside STEP count */
static long count;              /* allocations seen while armed */
static long fail_at;            /* fail the fail_at-th (1-based); 0: none */
static uint64_t rnd_state;      /* random mode: fail 1 in 8 */
static int injected;            /* a failure was injected in the current step */
#define MAX_SITES 256
static void *sites[MAX_SITES];
static int nsites;

static char kind_of[4096]; /* allocator of allocation k in the clean run: c(alloc) m(alloc) g(ate: posix_memalign 64) p(osix_memalign) */
static int step_of[4096];  /* and the step it happened in */
static int nsteps;
static int negative; /* --negative-control: flip a page after each failed call */
static const char *step_name[128];

static int should_fail(void *site, char kind)
{
    if (!armed) {
        return 0;
    }
    int i;
    for (i = 0; i < nsites && sites[i] != site; i++) {
    }
    if (i == nsites && nsites < MAX_SITES) {
        sites[nsites++] = site;
    }
    count++;
    if (count < 4096) {
        kind_of[count] = kind;
        step_of[count] = nsteps;
    }
    int f = count == fail_at;
    if (rnd_state) {
        rnd_state ^= rnd_state << 13, rnd_state ^= rnd_state >> 7, rnd_state ^= rnd_state << 17;
        f |= (rnd_state & 7) == 0;
    }
    injected |= f;
    return f;
}

void *__wrap_calloc(size_t n, size_t s)
{
    return should_fail(__builtin_return_address(0), 'c') ? NULL : __real_calloc(n, s);
}
void *__wrap_malloc(size_t n)
{
    return should_fail(__builtin_return_address(0), 'm') ? NULL : __real_malloc(n);
}
int __wrap_posix_memalign(void **p, size_t a, size_t n)
{
    /* 64-byte alignment: the tracker's update gate (one cache line per counter); any other is
     * Embedded Swift's swift_allocObject, which the library must not reach */
    return should_fail(__builtin_return_address(0), a == 64 ? 'g' : 'p') ? ENOMEM : __real_posix_memalign(p, a, n);
}

/* ---- tracker state snapshots --------------------------------------------- */
typedef struct snap {
    int nslots;
    uint64_t slot[8][2], pages, shared, digest, control;
    uint8_t *bits[8];
} snap;

static void take(sevpeb_tracker *t, snap *s)
{
    memset(s, 0, sizeof(*s));
    if (!t) {
        return;
    }
    s->nslots = sevpeb_slot_count(t);
    for (int i = 0; i < s->nslots && i < 8; i++) {
        sevpeb_slot_get(t, (uint32_t)i, &s->slot[i][0], &s->slot[i][1]);
        size_t len = (size_t)(s->slot[i][1] + 7) / 8;
        s->bits[i] = __real_calloc(1, len);
        sevpeb_get_bitmap(t, s->slot[i][0], s->slot[i][1], s->bits[i], len);
    }
    sevpeb_totals(t, &s->pages, &s->shared);
    sevpeb_digest(t, &s->digest);
    s->control = sevpeb_get_migration_control(t);
}

static int same(const snap *a, const snap *b)
{
    if (a->nslots != b->nslots || a->pages != b->pages || a->shared != b->shared || a->digest != b->digest ||
        a->control != b->control) {
        return 0;
    }
    for (int i = 0; i < a->nslots && i < 8; i++) {
        if (memcmp(a->slot[i], b->slot[i], sizeof(a->slot[i])) ||
            memcmp(a->bits[i], b->bits[i], (size_t)(a->slot[i][1] + 7) / 8)) {
            return 0;
        }
    }
    return 1;
}

static void drop(snap *s)
{
    for (int i = 0; i < 8; i++) {
        free(s->bits[i]);
    }
}

/* ---- the sequence --------------------------------------------------------- */
#define MAX_STEPS 128
static int64_t clean_result[MAX_STEPS];
static int recording, stop, enomem_steps;
static long failed_points;

/* Run one call with injection armed. On -ENOMEM check that `t` did not
 * change, then stop the sequence (the caller cleans up). */
#define STEP(t, expr) STEP_E(t, ENOMEM, expr)
#define STEP_E(t, err, expr)                                                                                \
    ({                                                                                                  \
        int64_t r_ = 0;                                                                                 \
        if (!stop) {                                                                                    \
            snap before_, after_;                                                                       \
            take(t, &before_);                                                                          \
            injected = 0;                                                                               \
            armed = 1;                                                                                  \
            r_ = (int64_t)(expr);                                                                       \
            armed = 0;                                                                                  \
            int i_ = nsteps++;                                                                          \
            if (recording) {                                                                            \
                step_name[i_] = #expr;                                                                  \
                clean_result[i_] = r_;                                                                  \
                CHECK(!injected && r_ >= 0, "step %d (%s) clean: %" PRId64, i_, #expr, r_);             \
            } else if (r_ != clean_result[i_]) {                                                        \
                CHECK(injected && r_ == -(err), "step %d (%s): %" PRId64 \
                      " (clean %" PRId64 ", injected %d)", i_, #expr, r_, clean_result[i_], injected);   \
                if (negative && t) { /* negative control: a change the check must see */                \
                    sevpeb_set_range(t, before_.slot[0][0], 1, !sevpeb_test(t, before_.slot[0][0]));    \
                }                                                                                       \
                take(t, &after_);                                                                       \
                CHECK(same(&before_, &after_), "step %d (%s): state changed by the failed call", i_,    \
                      #expr);                                                                           \
                drop(&after_);                                                                          \
                enomem_steps++;                                                                         \
                stop = 1;                                                                               \
            }                                                                                           \
            drop(&before_);                                                                             \
        }                                                                                               \
        r_;                                                                                             \
    })

static long change_calls;
static void count_change(void *opaque, uint64_t gfn, uint64_t npages, int state)
{
    (void)opaque, (void)gfn, (void)npages, (void)state;
    change_calls++;
}

/* A struct kvm_run carrying one exit, for the exit handlers. */
static struct kvm_run *exit_run(struct kvm_run *r, uint32_t reason, uint64_t a0, uint64_t a1, uint64_t a2)
{
    memset(r, 0, sizeof(*r));
    r->exit_reason = reason;
    if (reason == KVM_EXIT_HYPERCALL) {
        r->hypercall.nr = 12; /* KVM_HC_MAP_GPA_RANGE */
        r->hypercall.args[0] = a0, r->hypercall.args[1] = a1, r->hypercall.args[2] = a2;
    } else {
        r->msr.index = 0x4b564d08; /* MSR_KVM_MIGRATION_CONTROL */
        r->msr.data = a0;
    }
    return r;
}

static int (*m_open)(int), (*m_close)(int), (*m_gmem)(int);

static const uint64_t slots[][2] = { { 0, 3 * 16384 + 100 }, { 1 << 20, 70000 }, { 3 << 20, 200 } };
static const uint64_t gibs = 1ull << 30;

static void layout(sevpeb_tracker *t)
{
    for (int i = 0; i < 3; i++) {
        STEP(t, sevpeb_slot_add(t, slots[i][0], slots[i][1]));
    }
}

/* A clean migration src -> fresh destination, injection off: the survivor works. */
static int migrates(sevpeb_tracker *src)
{
    sevpeb_tracker *dst = NULL;
    testchan c = { 0 };
    int ok = sevpeb_tracker_create(0, &dst) == 0;
    int n = sevpeb_slot_count(src);
    for (int i = 0; ok && i < n; i++) {
        uint64_t b, p;
        ok = sevpeb_slot_get(src, (uint32_t)i, &b, &p) == 0 && sevpeb_slot_add(dst, b, p) == 0;
    }
    sevpeb_save_cleanup(src);
    ok = ok && sevpeb_save_setup(src, testchan_write, &c) == 0 && sevpeb_save_complete(src, testchan_write, &c) == 0;
    sevpeb_save_cleanup(src);
    ok = ok && sevpeb_load_setup(dst) == 0 && sevpeb_load_state(dst, testchan_read, &c, 1) == 0 &&
         sevpeb_load_state(dst, testchan_read, &c, 1) == 1;
    snap a, b;
    take(src, &a);
    take(dst, &b);
    ok = ok && same(&a, &b);
    drop(&a);
    drop(&b);
    testchan_free(&c);
    sevpeb_tracker_destroy(dst);
    return ok;
}

static void sequence(void)
{
    sevpeb_tracker *src = NULL, *dst = NULL;
    testchan c = { 0 };
    uint8_t bm[4096];
    STEP(NULL, sevpeb_tracker_create(0, &src));
    if (stop) {
        CHECK(src == NULL, "failed create leaves *out NULL");
        return;
    }
    layout(src);
    /* uniform -> mixed in several chunks and groups, then back */
    STEP(src, sevpeb_set_range(src, 5, 10, SEVPEB_SHARED));
    STEP(src, sevpeb_set_range(src, 16384 - 3, 16384 + 9, SEVPEB_SHARED));
    STEP_E(src, SEVPEB_KVM_EINVAL, sevpeb_map_gpa_range(src, ((1ull << 20) + 40000) << 12, 77, 0));
    STEP_E(src, SEVPEB_KVM_EINVAL, sevpeb_map_gpa_range(src, ((1ull << 20) + 65536) << 12, 1, 0));
    for (size_t i = 0; i < sizeof(bm); i++) {
        bm[i] = (uint8_t)(i * 37 + 11);
    }
    STEP(src, sevpeb_set_bitmap(src, 16384 - 1000, 8 * 2048, bm, 2048)); /* across two chunks */
    STEP(src, sevpeb_set_range(src, 0, 16384, SEVPEB_PRIVATE)); /* mixed -> uniform */
    STEP(src, sevpeb_set_range(src, 30, 2, SEVPEB_SHARED));
    STEP(src, sevpeb_set_migration_control(src, 1));
    STEP(src, sevpeb_slot_resize(src, 1 << 20, 70000 + 16384 * 3));
    STEP(src, sevpeb_set_range(src, (1 << 20) + 80000, 5, SEVPEB_SHARED));
    STEP(src, sevpeb_slot_resize(src, 3 << 20, 100));
    STEP(src, sevpeb_slot_add(src, gibs, 300));
    STEP(src, sevpeb_set_range(src, gibs + 3, 3, SEVPEB_SHARED));
    STEP(src, sevpeb_slot_remove(src, gibs));
    STEP(src, sevpeb_slot_count(src));
    /* destination with the same layout */
    STEP(NULL, sevpeb_tracker_create(0, &dst));
    for (int i = 0; !stop && i < 3; i++) {
        uint64_t b, p;
        sevpeb_slot_get(src, (uint32_t)i, &b, &p);
        STEP(dst, sevpeb_slot_add(dst, b, p));
    }
    /* save: START, two PARTs with changes between, END; load each into staging */
    STEP(src, sevpeb_save_setup(src, testchan_write, &c));
    STEP(dst, sevpeb_load_setup(dst));
    STEP(dst, sevpeb_load_state(dst, testchan_read, &c, 1));
    STEP(src, sevpeb_set_range(src, 3 * 16384 + 7, 9, SEVPEB_SHARED));
    STEP(src, sevpeb_set_range(src, (1 << 20) + 16384 * 2 + 5, 16384, SEVPEB_SHARED));
    STEP(src, sevpeb_save_iterate(src, testchan_write, &c, 600));
    STEP(dst, sevpeb_load_state(dst, testchan_read, &c, 1));
    STEP(src, sevpeb_set_bitmap(src, (3 << 20) + 8, 64, bm, 8));
    STEP(src, sevpeb_save_iterate(src, testchan_write, &c, 0));
    STEP(dst, sevpeb_load_state(dst, testchan_read, &c, 1));
    STEP(src, sevpeb_set_range(src, 100, 3, SEVPEB_SHARED));
    STEP(src, sevpeb_save_complete(src, testchan_write, &c));
    STEP(dst, sevpeb_load_state(dst, testchan_read, &c, 1));
    if (!stop) {
        snap a, b;
        take(src, &a);
        take(dst, &b);
        CHECK(same(&a, &b), "destination == source after the migration");
        drop(&a);
        drop(&b);
    }
    sevpeb_save_cleanup(src);
    sevpeb_load_cleanup(dst);

    /* the rest of the header: queries, callbacks, exits, layout */
    uint64_t u1 = 0, u2 = 0, gfns[8];
    sevpeb_run runs[16];
    sevpeb_save_stats st = { .size = sizeof(st) };
    uint32_t eax = 0;
    struct kvm_run kr;
    struct kvm_msr_filter_range fr;
    uint8_t frbits = 1;
    STEP(src, sevpeb_set_change_callback(src, count_change, NULL));
    STEP(src, sevpeb_test(src, 30));
    STEP(src, sevpeb_count_shared(src, 0, 3 * 16384 + 100));
    STEP(src, sevpeb_next_shared_run(src, 0, &u1, &u2));
    STEP(src, sevpeb_shared_runs(src, 0, runs, 16));
    STEP(src, sevpeb_count_differences(src, dst, 0, 3 * 16384 + 100, &u1, gfns, 8));
    STEP(src, sevpeb_totals(src, &u1, &u2));
    STEP(src, (int64_t)sevpeb_memory_bytes(src));
    STEP(src, sevpeb_save_get_stats(src, &st));
    STEP(src, (int64_t)sevpeb_save_pending(src));
    STEP(src, (int64_t)sevpeb_get_migration_control(src));
    STEP(src, sevpeb_set_require_ready(src, 1));
    STEP(src, sevpeb_may_migrate(src));
    STEP(src, sevpeb_set_require_ready(src, 0));
    /* the guest sees the result in hypercall.ret: 0, or -KVM_EINVAL */
#define HC(gpa, n) (sevpeb_kvm_handle_hypercall(src, exit_run(&kr, KVM_EXIT_HYPERCALL, gpa, n, 0)) == 1 \
                    ? (int64_t)kr.hypercall.ret : -1000)
    STEP_E(src, SEVPEB_KVM_EINVAL, HC(50ull << 12, 4));
    STEP_E(src, SEVPEB_KVM_EINVAL, HC(((1ull << 20) + 16384 * 3 + 1) << 12, 2));
    STEP(src, sevpeb_kvm_handle_msr_exit(src, exit_run(&kr, KVM_EXIT_X86_WRMSR, 1, 0, 0)));
    STEP(src, sevpeb_kvm_handle_msr_exit(src, exit_run(&kr, KVM_EXIT_X86_RDMSR, 0, 0, 0)));
    STEP(src, sevpeb_kvm_msr_filter_range(&fr, &frbits));
    STEP(src, sevpeb_kvm_cpuid_features(src, &eax));
    STEP(src, sevpeb_kvm_may_migrate(src));
    /* a new slot, a resize, a removal whose shared pages a merged slot keeps;
     * then back to the three slots */
    {
        sevpeb_slot grown[4] = { { 0, 3 * 16384 + 100 }, { 1 << 20, 70000 + 16384 * 5 }, { 3 << 20, 100 }, { gibs, 70000 } };
        sevpeb_slot merged[2] = { { 0, 3 * 16384 + 100 }, { 1 << 20, (2 << 20) + 100 } };
        sevpeb_slot three[3] = { { 0, 3 * 16384 + 100 }, { 1 << 20, 70000 + 16384 * 3 }, { 3 << 20, 100 } };
        STEP(src, sevpeb_set_layout(src, grown, 4));
        STEP(src, sevpeb_set_range(src, gibs + 16384 + 3, 70, SEVPEB_SHARED));
        STEP(src, sevpeb_set_range(src, (3 << 20) + 1, 5, SEVPEB_SHARED));
        STEP(src, sevpeb_set_layout(src, merged, 2));
        STEP(src, sevpeb_set_layout(src, three, 3));
    }
    STEP(src, sevpeb_set_change_callback(src, NULL, NULL));
    STEP(src, sevpeb_reset(src));
    STEP(src, sevpeb_set_range(src, 9, 1, SEVPEB_SHARED));

    /* seed dialects and memory attributes, through the interposer's models */
    if (m_open && !stop) {
        int fd = m_open(8);
        for (unsigned i = 0; i < 3; i++) {
            uint64_t b, p;
            sevpeb_slot_get(src, i, &b, &p);
            struct kvm_userspace_memory_region r = { i, 0, b << 12, p << 12, 0 };
            ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r);
        }
        STEP(src, sevpeb_kvm_bind(src, fd, SEVPEB_KVM_SEED_V7_V9));
        STEP(src, sevpeb_kvm_push_to_kernel(src));
        STEP(src, sevpeb_kvm_kernel_set_bitmap(src, 1000, 8 * 512, bm, 512));
        STEP(src, sevpeb_kvm_kernel_get_bitmap(src, 900, 8 * 512, bm, 512));
        STEP(src, sevpeb_kvm_sync_from_kernel(src));
        STEP(src, sevpeb_kvm_kernel_bitmap_size(src, &u1));
        STEP(src, sevpeb_kvm_reset_kernel(src));
        STEP(src, sevpeb_kvm_unbind(src));
        m_close(fd);
        int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
        int vm = kvm >= 0 ? ioctl(kvm, KVM_CREATE_VM, 0) : -1;
        if (vm >= 0 && m_gmem(vm) == 0) {
            STEP(src, sevpeb_kvm_bind(src, vm, SEVPEB_KVM_UPSTREAM));
            STEP(src, sevpeb_kvm_install_msr_filter(src, SEVPEB_KVM_MSR_FILTER_BY_VMM));
            STEP(src, sevpeb_kvm_cpuid_features(src, &eax));
            STEP(src, sevpeb_kvm_apply_memory_attributes(src));
            STEP(src, sevpeb_kvm_unbind(src));
            m_close(vm);
        }
        if (vm >= 0) {
            close(vm);
        }
        if (kvm >= 0) {
            close(kvm);
        }
    }
    if (stop) {
        CHECK(migrates(src), "the tracker that saw -ENOMEM still migrates correctly");
    }
    testchan_free(&c);
    sevpeb_tracker_destroy(src);
    sevpeb_tracker_destroy(dst);
}

/* One run in a child: its CHECK counts come back through a pipe. */
static int child_run(long k, uint64_t seed, long *allocs, int *enomem, int *nsites_out)
{
    int p[2];
    if (pipe(p) != 0) {
        return -1;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        passed = failed = nsteps = nsites = enomem_steps = stop = 0;
        count = 0;
        fail_at = k;
        rnd_state = seed;
        sequence();
        long out[5] = { passed, failed, count, enomem_steps, nsites };
        if (write(p[1], out, sizeof(out)) != (ssize_t)sizeof(out)) {
            _exit(3);
        }
        fflush(NULL);
        exit(failed ? 1 : 0); /* exit, not _exit: LSan runs at exit */
    }
    close(p[1]);
    long out[5] = { 0 };
    ssize_t n = read(p[0], out, sizeof(out));
    close(p[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    passed += out[0];
    failed += out[1];
    *allocs = out[2];
    *enomem = (int)out[3];
    *nsites_out = (int)out[4];
    if (n != (ssize_t)sizeof(out) || !WIFEXITED(st) || WEXITSTATUS(st) != (out[1] ? 1 : 0)) {
        CHECK(0, "run failing allocation %ld (%s, step %d) (seed %" PRIu64 "): child %s %d (leak or crash)", k,
              k ? (kind_of[k] == 'c' ? "calloc" : kind_of[k] == 'm' ? "malloc" : kind_of[k] == 'g' ? "posix_memalign (gate)" : "posix_memalign") : "-",
              k ? step_of[k] : -1, seed,
              WIFSIGNALED(st) ? "killed by signal" : "exit", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    m_open = (int (*)(int))dlsym(RTLD_DEFAULT, "kvmodel_open");
    m_close = (int (*)(int))dlsym(RTLD_DEFAULT, "kvmodel_close");
    m_gmem = (int (*)(int))dlsym(RTLD_DEFAULT, "kvmodel_gmem");
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 0);
        } else if (!strcmp(argv[i], "--negative-control")) {
            negative = 1;
        }
    }

    /* the clean run, in this process: counts allocations and records results */
    recording = 1;
    sequence();
    recording = 0;
    long total = count;
    int steps = nsteps, clean_sites = nsites;
    printf("allocfail: %d calls, %ld allocations from %d distinct call sites in the clean run (KVM models: %s)\n",
           steps, total, clean_sites, m_open ? "yes" : "no (run with the interposer preloaded)");
    CHECK(total > 0, "the hook sees the library's allocations");

    int nkind[4] = { 0 }, rt_steps[MAX_STEPS] = { 0 };
    for (long k = 1; k <= total && k < 4096; k++) {
        nkind[kind_of[k] == 'c' ? 0 : kind_of[k] == 'm' ? 1 : kind_of[k] == 'g' ? 3 : 2]++;
        rt_steps[step_of[k]] += kind_of[k] == 'p';
    }
    printf("allocfail: %d calloc (Mem.calloc), %d malloc (mutex), %d posix_memalign of 64 (update gate), "
           "%d other posix_memalign (Embedded swift_allocObject)\n", nkind[0], nkind[1], nkind[3], nkind[2]);
    for (int i = 0; i < steps; i++) {
        if (rt_steps[i]) {
            printf("allocfail:   %d swift_allocObject in step %d: %s\n", rt_steps[i], i, step_name[i]);
        }
    }
    long enomem_runs = 0, max_sites = clean_sites, points = 0;
    for (long k = 1; k <= total; k++) {
        points++;
        long allocs;
        int en, ns;
        if (child_run(k, 0, &allocs, &en, &ns) == 0) {
            enomem_runs += en;
            failed_points++;
            max_sites = ns > max_sites ? ns : max_sites;
        }
    }
    printf("allocfail: %ld of %ld failure points ran clean (%s); %ld calls returned -ENOMEM with the state unchanged\n",
           failed_points, points, "every allocation", enomem_runs);
    CHECK(enomem_runs == points, "every injected failure surfaced as -ENOMEM of the call that allocated (%ld of %ld)",
          enomem_runs, points);
    if (seed) {
        long runs = 0, en_total = 0;
        for (int i = 0; i < 200; i++) {
            long allocs;
            int en, ns;
            if (child_run(0, seed + (uint64_t)i, &allocs, &en, &ns) == 0) {
                runs++;
                en_total += en;
            }
        }
        printf("allocfail: random (seed %" PRIu64 ", 1 in 8): %ld of 200 runs clean, %ld -ENOMEM\n", seed, runs,
               en_total);
    }
    printf("allocfail: %d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
