/*
 * C-level test of the KVM section of include/sevpeb.h, against the installed
 * archive (linked through pkg-config by `make kvm-check`). Calls every
 * sevpeb_kvm_* function.
 *
 * Part A, REAL kernel (/dev/kvm; VM-level ioctls work here, vCPUs never run
 * and KVM_RUN is never called): a real VM with two memslots, bind upstream,
 * KVM_CAP_EXIT_HYPERCALL, the MSR filter, a real vCPU's mmap'ed struct
 * kvm_run filled with synthetic KVM_EXIT_HYPERCALL / RDMSR / WRMSR exits,
 * CPUID bits, readiness, errno propagation (closed fd, non-KVM fd).
 * Skipped with a printed message where /dev/kvm cannot be opened.
 *
 * Parts B-E need tests/c/kvm_interposer.so in LD_PRELOAD (skipped with a
 * printed message otherwise; `--require-model` makes that a failure):
 *   B  seed v6 dialect against the v6 kernel model behind the real ioctl
 *      entry point (quirk: SET only clears bits);
 *   C  seed v7..v9 dialect against the v8 model (quirk: misaligned SET);
 *   D  a migration v6 source -> v8 destination through the sync points;
 *   E  memory attributes: the real VM fd augmented with the 6.8 model;
 *   F  the recorder: part A (the whole upstream path, real /dev/kvm) issued
 *      no request with type 0xAE and nr 0xc5..0xc9 except exactly
 *      KVM_X86_SET_MSR_FILTER (0x4188AEC6) from the MSR filter install, and a
 *      second upstream run with a VMM-owned filter issued none at all.
 * Prints "N passed, N failed".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sevpeb.h"
#include "testcheck.h"
#include "testchan.h"

static int skipped;

#define SKIP(...)                                                            \
    do {                                                                     \
        skipped++;                                                           \
        printf("SKIP: ");                                                    \
        printf(__VA_ARGS__);                                                 \
        printf("\n");                                                        \
    } while (0)

/* ---- the interposer's test API, if preloaded ---- */
static int (*m_open)(int);
static int (*m_gmem)(int);
static int (*m_close)(int);
static long (*m_hypercall)(int, uint64_t, uint64_t, uint64_t);
static int (*m_bit)(int, uint64_t);
static uint64_t (*m_size)(int);
static int (*m_attr)(int, uint64_t);
static size_t (*m_recorded)(unsigned long *, int *, size_t);
static void (*m_record_reset)(void);

static int have_model(void)
{
    m_open = (int (*)(int))dlsym(RTLD_DEFAULT, "kvmodel_open");
    m_gmem = (int (*)(int))dlsym(RTLD_DEFAULT, "kvmodel_gmem");
    m_close = (int (*)(int))dlsym(RTLD_DEFAULT, "kvmodel_close");
    m_hypercall = (long (*)(int, uint64_t, uint64_t, uint64_t))dlsym(RTLD_DEFAULT, "kvmodel_hypercall");
    m_bit = (int (*)(int, uint64_t))dlsym(RTLD_DEFAULT, "kvmodel_bit");
    m_size = (uint64_t(*)(int))dlsym(RTLD_DEFAULT, "kvmodel_size");
    m_attr = (int (*)(int, uint64_t))dlsym(RTLD_DEFAULT, "kvmodel_attr");
    m_recorded = (size_t(*)(unsigned long *, int *, size_t))dlsym(RTLD_DEFAULT, "kvmodel_recorded");
    m_record_reset = (void (*)(void))dlsym(RTLD_DEFAULT, "kvmodel_record_reset");
    return m_open && m_gmem && m_close && m_hypercall && m_bit && m_size && m_attr && m_recorded && m_record_reset;
}

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static int bit_of(const uint8_t *b, uint64_t i) { return (b[i / 8] >> (i % 8)) & 1; }
static void put_bit(uint8_t *b, uint64_t i, int v)
{
    if (v) {
        b[i / 8] |= (uint8_t)(1u << (i % 8));
    } else {
        b[i / 8] &= (uint8_t)~(1u << (i % 8));
    }
}

/* =========================================================================
 * Part A: the upstream path against the real kernel
 * ========================================================================= */

static int kvm_fd = -1;

/* A real VM with slots [0, 2 MiB) and [4 GiB, 4 GiB + 4 MiB), mirrored in t. */
#define SLOT0_GFN 0ull
#define SLOT0_PAGES 512ull
#define SLOT1_GFN 0x100000ull
#define SLOT1_PAGES 1024ull
struct vm {
    int fd, vcpu;
    struct kvm_run *run;
    size_t run_size;
    void *mem0, *mem1;
};

static int vm_create(struct vm *v)
{
    memset(v, 0, sizeof(*v));
    v->fd = ioctl(kvm_fd, KVM_CREATE_VM, 0);
    if (v->fd < 0) {
        return -errno;
    }
    v->mem0 = mmap(NULL, SLOT0_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    v->mem1 = mmap(NULL, SLOT1_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    struct kvm_userspace_memory_region r0 = { 0, 0, SLOT0_GFN << 12, SLOT0_PAGES * 4096, (uintptr_t)v->mem0 };
    struct kvm_userspace_memory_region r1 = { 1, 0, SLOT1_GFN << 12, SLOT1_PAGES * 4096, (uintptr_t)v->mem1 };
    if (ioctl(v->fd, KVM_SET_USER_MEMORY_REGION, &r0) || ioctl(v->fd, KVM_SET_USER_MEMORY_REGION, &r1)) {
        return -errno;
    }
    /* A real vCPU, only for its mmap'ed struct kvm_run (never KVM_RUN). */
    v->vcpu = ioctl(v->fd, KVM_CREATE_VCPU, 0);
    int sz = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (v->vcpu < 0 || sz <= 0) {
        return -errno;
    }
    v->run_size = (size_t)sz;
    v->run = mmap(NULL, v->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->vcpu, 0);
    return v->run == MAP_FAILED ? -errno : 0;
}

static void vm_destroy(struct vm *v)
{
    munmap(v->run, v->run_size);
    close(v->vcpu);
    close(v->fd);
    munmap(v->mem0, SLOT0_PAGES * 4096);
    munmap(v->mem1, SLOT1_PAGES * 4096);
}

static sevpeb_tracker *tracker_with_slots(void)
{
    sevpeb_tracker *t = NULL;
    if (sevpeb_tracker_create(0, &t) != 0) {
        return NULL;
    }
    sevpeb_slot_add(t, SLOT0_GFN, SLOT0_PAGES);
    sevpeb_slot_add(t, SLOT1_GFN, SLOT1_PAGES);
    return t;
}

static void hypercall_exit(struct kvm_run *run, uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2)
{
    run->exit_reason = KVM_EXIT_HYPERCALL;
    run->hypercall.nr = nr;
    run->hypercall.args[0] = a0;
    run->hypercall.args[1] = a1;
    run->hypercall.args[2] = a2;
    run->hypercall.ret = 0x5a5a5a5a; /* must be overwritten */
}

static void msr_exit(struct kvm_run *run, uint32_t reason, uint32_t index, uint64_t data)
{
    run->exit_reason = reason;
    run->msr.error = 0x77;
    run->msr.reason = KVM_MSR_EXIT_REASON_FILTER;
    run->msr.index = index;
    run->msr.data = data;
}

struct hc_thread {
    sevpeb_tracker *t;
    int id, bad;
};

static void *hc_worker(void *p)
{
    struct hc_thread *h = p;
    struct kvm_run *run = aligned_alloc(64, 4096);
    memset(run, 0, 4096);
    for (int i = 0; i < 2000; i++) {
        uint64_t gfn = SLOT1_GFN + (uint64_t)h->id * 128 + (uint64_t)(i % 128);
        hypercall_exit(run, 12, gfn << 12, 1, (i & 1) ? SEVPEB_MAP_GPA_RANGE_ENCRYPTED : 0);
        if (sevpeb_kvm_handle_hypercall(h->t, run) != 1 || run->hypercall.ret != 0) {
            h->bad++;
        }
    }
    free(run);
    return NULL;
}

/* Runs the whole upstream path; own_filter = the VMM keeps its MSR filter. */
static void part_a(int own_filter)
{
    struct vm v;
    int r = vm_create(&v);
    CHECK(r == 0, "create a real VM, 2 memslots, 1 vCPU: %d", r);
    if (r) {
        return;
    }
    sevpeb_tracker *t = tracker_with_slots();
    uint32_t eax = 0xffffffff;

    /* bind: argument errors, then the real bind */
    CHECK(sevpeb_kvm_bind(NULL, v.fd, SEVPEB_KVM_UPSTREAM) == -EINVAL, "NULL tracker");
    CHECK(sevpeb_kvm_bind(t, v.fd, 5) == -EINVAL, "unknown dialect");
    CHECK(sevpeb_kvm_bind(t, -1, SEVPEB_KVM_UPSTREAM) == -EBADF, "negative fd");
    int closed = dup(v.fd);
    close(closed);
    CHECK(sevpeb_kvm_bind(t, closed, SEVPEB_KVM_UPSTREAM) == -EBADF, "closed fd: EBADF from the kernel");
    int devnull = open("/dev/null", O_RDONLY);
    CHECK(sevpeb_kvm_bind(t, devnull, SEVPEB_KVM_UPSTREAM) == -ENOTTY, "non-KVM fd: ENOTTY from the kernel");
    close(devnull);
    CHECK(sevpeb_kvm_cpuid_features(t, &eax) == 0 && eax == 0, "unbound: no CPUID bits (%#x)", eax);
    CHECK(sevpeb_kvm_may_migrate(t) == 0 && strstr(sevpeb_last_error(), "bound"), "unbound: may not migrate");
    CHECK(sevpeb_kvm_enable_hypercall_exit(t) == -EBADF, "enable before bind");
    CHECK(sevpeb_kvm_bind(t, v.fd, SEVPEB_KVM_UPSTREAM) == 0, "bind upstream to the real VM fd");
    CHECK(sevpeb_kvm_bind(t, v.fd, SEVPEB_KVM_UPSTREAM) == -EBUSY, "bind twice");

    /* before the cap: nothing may be advertised, migration refused */
    CHECK(sevpeb_kvm_cpuid_features(t, &eax) == 0 && eax == 0, "no CPUID bits before the cap (%#x)", eax);
    CHECK(sevpeb_kvm_cpuid_features(t, NULL) == -EINVAL, "NULL eax");
    CHECK(sevpeb_kvm_may_migrate(t) == 0 && strstr(sevpeb_last_error(), "KVM_CAP_EXIT_HYPERCALL"),
          "refused before the cap: %s", sevpeb_last_error());

    /* KVM_CAP_EXIT_HYPERCALL on the real kernel */
    int mask = ioctl(v.fd, KVM_CHECK_EXTENSION, KVM_CAP_EXIT_HYPERCALL);
    r = sevpeb_kvm_enable_hypercall_exit(t);
    if (mask & (1 << 12)) {
        CHECK(r == 0, "enable KVM_CAP_EXIT_HYPERCALL (kernel mask %#x): %d", mask, r);
        CHECK(sevpeb_kvm_enable_hypercall_exit(t) == 0, "idempotent");
        /* the kernel accepted 1 << 12; it would refuse a superset of its mask */
        struct kvm_enable_cap bad = { .cap = KVM_CAP_EXIT_HYPERCALL, .args = { (uint64_t)mask | 1 } };
        CHECK(ioctl(v.fd, KVM_ENABLE_CAP, &bad) == -1 && errno == EINVAL, "kernel refuses a non-subset mask");
        CHECK(sevpeb_kvm_cpuid_features(t, &eax) == 0 && eax == (1u << SEVPEB_KVM_FEATURE_HC_MAP_GPA_RANGE),
              "only HC_MAP_GPA_RANGE before the MSR filter (%#x)", eax);
    } else {
        CHECK(r == -EOPNOTSUPP, "kernel without the exit: clear error %d", r);
        SKIP("kernel reports KVM_CAP_EXIT_HYPERCALL mask %#x: hypercall-exit checks not run", mask);
    }
    CHECK(sevpeb_kvm_may_migrate(t) == 0 && strstr(sevpeb_last_error(), "MSR"), "refused before the MSR: %s",
          sevpeb_last_error());

    /* MSR_KVM_MIGRATION_CONTROL routing */
    CHECK(sevpeb_kvm_install_msr_filter(t, 2) == -EINVAL, "unknown flag");
    if (own_filter) {
        /* the VMM's own filter: one range from the library, installed by "the VMM" */
        struct kvm_msr_filter f;
        uint8_t bitmap = 0xff;
        memset(&f, 0, sizeof(f));
        CHECK(sevpeb_kvm_msr_filter_range(NULL, &bitmap) == -EINVAL, "NULL range");
        CHECK(sevpeb_kvm_msr_filter_range(&f.ranges[0], NULL) == -EINVAL, "NULL bitmap");
        CHECK(sevpeb_kvm_msr_filter_range(&f.ranges[0], &bitmap) == 0, "fill range");
        CHECK(f.ranges[0].flags == (KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE) && f.ranges[0].nmsrs == 1 &&
                  f.ranges[0].base == 0x4b564d08u && f.ranges[0].bitmap == &bitmap && bitmap == 0,
              "range fields %#x %u %#x", f.ranges[0].flags, f.ranges[0].nmsrs, f.ranges[0].base);
        CHECK(sevpeb_kvm_install_msr_filter(t, SEVPEB_KVM_MSR_FILTER_BY_VMM) == 0, "declare VMM-owned filter");
    } else {
        r = sevpeb_kvm_install_msr_filter(t, 0);
        CHECK(r == 0, "install the MSR filter on the real VM: %d", r);
    }
    if (mask & (1 << 12)) {
        CHECK(sevpeb_kvm_cpuid_features(t, &eax) == 0 &&
                  eax == ((1u << SEVPEB_KVM_FEATURE_HC_MAP_GPA_RANGE) | (1u << SEVPEB_KVM_FEATURE_MIGRATION_CONTROL)),
              "both CPUID bits now (%#x)", eax);
    }

    /* synthetic exits in the real vCPU's struct kvm_run */
    struct kvm_run *run = v.run;
    hypercall_exit(run, 12, (SLOT1_GFN + 16) << 12, 32, 0);
    CHECK(sevpeb_kvm_handle_hypercall(t, run) == 1 && run->hypercall.ret == 0, "MAP_GPA_RANGE shared: ret %" PRId64,
          (int64_t)run->hypercall.ret);
    CHECK(sevpeb_test(t, SLOT1_GFN + 16) == 0 && sevpeb_test(t, SLOT1_GFN + 47) == 0 && sevpeb_test(t, SLOT1_GFN + 48) == 1 &&
              sevpeb_test(t, SLOT1_GFN + 15) == 1,
          "tracker updated");
    hypercall_exit(run, 12, (SLOT1_GFN + 20) << 12, 4, SEVPEB_MAP_GPA_RANGE_ENCRYPTED | 1 /* 2M hint */);
    CHECK(sevpeb_kvm_handle_hypercall(t, run) == 1 && run->hypercall.ret == 0 && sevpeb_test(t, SLOT1_GFN + 21) == 1,
          "MAP_GPA_RANGE private with a page-size hint");
    int64_t shared_before = sevpeb_count_shared(t, SLOT1_GFN, SLOT1_PAGES);
    const uint64_t bad[][3] = {
        { (SLOT1_GFN << 12) + 8, 1, 0 },                           /* unaligned gpa */
        { SLOT1_GFN << 12, 0, 0 },                                 /* npages 0 */
        { SLOT1_GFN << 12, 1, 1ull << 5 },                         /* reserved attr bit */
        { SLOT1_GFN << 12, 1, 3 },                                 /* page size 3 */
        { (SLOT1_GFN + SLOT1_PAGES - 1) << 12, 2, 0 },             /* beyond the layout */
        { 0xfffffffffffff000ull, 2, 0 },                           /* overflow */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        hypercall_exit(run, 12, bad[i][0], bad[i][1], bad[i][2]);
        r = sevpeb_kvm_handle_hypercall(t, run);
        CHECK(r == 1 && (int64_t)run->hypercall.ret == -22 && sevpeb_last_error()[0],
              "bad MAP_GPA_RANGE %zu: handled, ret -KVM_EINVAL (%d, %" PRId64 ")", i, r, (int64_t)run->hypercall.ret);
    }
    CHECK(sevpeb_count_shared(t, SLOT1_GFN, SLOT1_PAGES) == shared_before, "bad calls changed nothing");
    hypercall_exit(run, 11, 0, 0, 0); /* KVM_HC_SCHED_YIELD: not ours */
    CHECK(sevpeb_kvm_handle_hypercall(t, run) == 0 && run->hypercall.ret == 0x5a5a5a5a, "other nr: not ours, untouched");
    run->exit_reason = KVM_EXIT_IO;
    CHECK(sevpeb_kvm_handle_hypercall(t, run) == 0, "other exit: not ours");
    CHECK(sevpeb_kvm_handle_hypercall(t, NULL) == -EINVAL && sevpeb_kvm_handle_hypercall(NULL, run) == -EINVAL, "NULLs");

    msr_exit(run, KVM_EXIT_X86_RDMSR, 0x4b564d08u, 0x1234);
    CHECK(sevpeb_kvm_handle_msr_exit(t, run) == 1 && run->msr.data == 0 && run->msr.error == 0, "RDMSR before any write: 0");
    CHECK(sevpeb_kvm_may_migrate(t) == 0 && strstr(sevpeb_last_error(), "migration-ready"), "not ready: %s",
          sevpeb_last_error());
    msr_exit(run, KVM_EXIT_X86_WRMSR, 0x4b564d08u, 1);
    CHECK(sevpeb_kvm_handle_msr_exit(t, run) == 1 && run->msr.error == 0 && sevpeb_get_migration_control(t) == 1,
          "WRMSR KVM_MIGRATION_READY");
    msr_exit(run, KVM_EXIT_X86_RDMSR, 0x4b564d08u, 0);
    CHECK(sevpeb_kvm_handle_msr_exit(t, run) == 1 && run->msr.data == 1 && run->msr.error == 0, "RDMSR reads it back");
    if (mask & (1 << 12)) {
        CHECK(sevpeb_kvm_may_migrate(t) == 1, "ready: may migrate (%s)", sevpeb_last_error());
    }
    msr_exit(run, KVM_EXIT_X86_WRMSR, 0x4b564d08u, 2);
    CHECK(sevpeb_kvm_handle_msr_exit(t, run) == 1 && run->msr.error == 1 && sevpeb_get_migration_control(t) == 1,
          "WRMSR reserved bit: #GP, unchanged");
    msr_exit(run, KVM_EXIT_X86_WRMSR, 0x35, 1); /* MSR_CORE_THREAD_COUNT: QEMU's own */
    CHECK(sevpeb_kvm_handle_msr_exit(t, run) == 0 && run->msr.error == 0x77, "other MSR: not ours, untouched");
    run->exit_reason = KVM_EXIT_HYPERCALL;
    CHECK(sevpeb_kvm_handle_msr_exit(t, run) == 0, "other exit: not ours");
    CHECK(sevpeb_kvm_handle_msr_exit(t, NULL) == -EINVAL, "NULL run");
    msr_exit(run, KVM_EXIT_X86_WRMSR, 0x4b564d08u, 0); /* CPU offline */
    CHECK(sevpeb_kvm_handle_msr_exit(t, run) == 1 && sevpeb_kvm_may_migrate(t) == 0, "cleared again: refused");

    /* vCPU threads at once */
    pthread_t th[8];
    struct hc_thread hs[8];
    for (int i = 0; i < 8; i++) {
        hs[i] = (struct hc_thread){ t, i, 0 };
        pthread_create(&th[i], NULL, hc_worker, &hs[i]);
    }
    int bad_total = 0;
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        bad_total += hs[i].bad;
    }
    CHECK(bad_total == 0, "8 threads x 2000 exits: %d bad", bad_total);

    /* seed-only calls on an upstream binding */
    uint8_t buf[64];
    uint64_t n = 0;
    CHECK(sevpeb_kvm_kernel_get_bitmap(t, 0, 8, buf, sizeof(buf)) == -EOPNOTSUPP, "kernel GET: upstream has no bitmap");
    CHECK(sevpeb_kvm_kernel_set_bitmap(t, 0, 8, NULL, 0) == -EOPNOTSUPP, "kernel SET");
    CHECK(sevpeb_kvm_kernel_bitmap_size(t, &n) == -EOPNOTSUPP, "kernel size");
    CHECK(sevpeb_kvm_sync_from_kernel(t) == 0 && sevpeb_kvm_push_to_kernel(t) == 0 && sevpeb_kvm_reset_kernel(t) == 0,
          "sync points: no-ops upstream");
    /* memory attributes: this host has no guest_memfd VM type */
    int ma = ioctl(v.fd, KVM_CHECK_EXTENSION, 233);
    r = sevpeb_kvm_apply_memory_attributes(t);
    if (ma <= 0 || !(ma & 8)) {
        CHECK(r == -EOPNOTSUPP && strstr(sevpeb_last_error(), "PRIVATE"),
              "real kernel without KVM_MEMORY_ATTRIBUTE_PRIVATE: clear error (%d)", r);
    } else {
        CHECK(r > 0, "memory attributes on the real kernel: %d", r);
    }

    CHECK(sevpeb_kvm_unbind(t) == 0 && sevpeb_kvm_cpuid_features(t, &eax) == 0 && eax == 0, "unbind: no CPUID bits");
    CHECK(sevpeb_kvm_unbind(NULL) == -EINVAL, "unbind NULL");
    CHECK(sevpeb_kvm_bind(t, v.fd, SEVPEB_KVM_UPSTREAM) == 0, "bind again after unbind");
    sevpeb_tracker_destroy(t);
    vm_destroy(&v);
}

/* =========================================================================
 * Parts B-D: seed dialects against the kernel models
 * ========================================================================= */

/* A seed VM: model fd with the given memslots (the model sees them as
 * KVM_SET_USER_MEMORY_REGION), and a tracker with the same layout. */
static const uint64_t seed_slots[][2] = { { 0, 300 }, { 300, 1000 }, { 2048 + 13, 5000 } };
#define SEED_END (2048 + 13 + 5000)
static int in_slot(uint64_t g) { return g < 1300 || (g >= 2061 && g < SEED_END); }

static int seed_vm(int version, sevpeb_tracker **t)
{
    int fd = m_open(version);
    *t = NULL;
    sevpeb_tracker_create(0, t);
    for (unsigned i = 0; i < 3; i++) {
        struct kvm_userspace_memory_region r = { i, 0, seed_slots[i][0] << 12, seed_slots[i][1] << 12, 0 };
        ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r);
        sevpeb_slot_add(*t, seed_slots[i][0], seed_slots[i][1]);
    }
    return fd;
}

/* Does the model kernel's [0, n) equal expect? */
static int model_equals(int fd, const uint8_t *expect, uint64_t n, uint64_t *first_diff)
{
    for (uint64_t i = 0; i < n; i++) {
        if (m_bit(fd, i) != bit_of(expect, i)) {
            *first_diff = i;
            return 0;
        }
    }
    return 1;
}

/* Only these requests may reach a seed model fd. */
static int only_requests(int fd, const unsigned long *allowed, int nallowed, unsigned long *stray)
{
    static unsigned long req[1 << 16];
    static int fds[1 << 16];
    size_t n = m_recorded(req, fds, 1 << 16);
    for (size_t i = 0; i < n && i < (1 << 16); i++) {
        if (fds[i] != fd) {
            continue;
        }
        int ok = req[i] == KVM_SET_USER_MEMORY_REGION; /* the test's own */
        for (int k = 0; k < nallowed; k++) {
            ok |= req[i] == allowed[k];
        }
        if (!ok) {
            *stray = req[i];
            return 0;
        }
    }
    return 1;
}

static void seed_common(int version, int fd, sevpeb_tracker *t)
{
    uint8_t *expect = malloc(SEED_END / 8 + 16), *buf = malloc(SEED_END / 8 + 16);
    uint64_t diff = 0, n = 0;
    int r;
    memset(expect, 0xff, SEED_END / 8 + 16);

    /* the guest's in-kernel hypercalls (KVM_HC_PAGE_ENC_STATUS) */
    for (int i = 0; i < 60; i++) {
        uint64_t g = rnd() % SEED_END, len = 1 + rnd() % 90, enc = rnd() & 1;
        if (g + len > SEED_END) {
            len = SEED_END - g;
        }
        CHECK(m_hypercall(fd, g << 12, len, enc) == 0, "model hypercall");
        for (uint64_t k = g; k < g + len; k++) {
            put_bit(expect, k, (int)enc);
        }
    }
    CHECK(sevpeb_kvm_enable_hypercall_exit(t) == -EOPNOTSUPP && sevpeb_kvm_install_msr_filter(t, 0) == -EOPNOTSUPP &&
              sevpeb_kvm_apply_memory_attributes(t) == -EOPNOTSUPP,
          "v%d: upstream calls refused on a seed binding", version);
    uint32_t eax = 1;
    CHECK(sevpeb_kvm_cpuid_features(t, &eax) == 0 && eax == 0, "v%d: no CPUID bits for seed", version);

    /* source sync point: kernel -> tracker */
    r = sevpeb_kvm_sync_from_kernel(t);
    CHECK(r == 1, "v%d: sync pulled changes (%d)", version, r);
    int same = 1;
    for (uint64_t g = 0; g < SEED_END; g++) {
        same &= !in_slot(g) || sevpeb_test(t, g) == bit_of(expect, g);
    }
    CHECK(same, "v%d: tracker equals the kernel after sync", version);
    CHECK(sevpeb_kvm_sync_from_kernel(t) == 0, "v%d: second sync: nothing new", version);

    /* GET any range (odd start, odd length, partial last byte kept) */
    memset(buf, 0xa5, 32);
    CHECK(sevpeb_kvm_kernel_get_bitmap(t, 301, 77, buf, 10) == 0, "v%d: GET 301+77", version);
    same = 1;
    for (uint64_t i = 0; i < 77; i++) {
        same &= bit_of(buf, i) == bit_of(expect, 301 + i);
    }
    CHECK(same && (buf[9] & 0xe0) == (0xa5 & 0xe0), "v%d: GET values and kept high bits", version);
    CHECK(sevpeb_kvm_kernel_get_bitmap(t, 0, 77, buf, 9) == -ENOSPC, "GET buffer too small");
    CHECK(sevpeb_kvm_kernel_get_bitmap(t, 0, 0, buf, 9) == -EINVAL, "GET 0 pages");
    CHECK(sevpeb_kvm_kernel_get_bitmap(t, 0, 8, NULL, 9) == -EINVAL, "GET NULL");
    CHECK(sevpeb_kvm_kernel_get_bitmap(t, ~0ull, 8, buf, 9) == -ERANGE, "GET overflow");

    /* set exact: ranges that need bits to go 0 -> 1 and 1 -> 0, misaligned */
    for (int i = 0; i < 40; i++) {
        uint64_t g = rnd() % SEED_END, len = 1 + rnd() % 200;
        if (g + len > SEED_END) {
            len = SEED_END - g;
        }
        uint8_t src[32];
        for (int k = 0; k < 32; k++) {
            src[k] = (uint8_t)rnd();
        }
        r = sevpeb_kvm_kernel_set_bitmap(t, g, len, src, sizeof(src));
        for (uint64_t k = 0; k < len; k++) {
            put_bit(expect, g + k, bit_of(src, k));
        }
        if (r != 0 || !model_equals(fd, expect, SEED_END, &diff)) {
            CHECK(0, "v%d: set exact gfn %" PRIu64 " + %" PRIu64 ": r %d, kernel differs at %" PRIu64, version, g, len, r,
                  diff);
            break;
        }
        passed++;
    }
    CHECK(sevpeb_kvm_kernel_set_bitmap(t, 130, 20, NULL, 0) == 0, "v%d: set range private (NULL)", version);
    for (uint64_t k = 130; k < 150; k++) {
        put_bit(expect, k, 1);
    }
    CHECK(model_equals(fd, expect, SEED_END, &diff), "v%d: NULL = private, neighbours kept (diff at %" PRIu64 ")", version,
          diff);
    CHECK(sevpeb_kvm_kernel_set_bitmap(t, 0, 64, buf, 7) == -ENOSPC, "SET src too small");
    CHECK(sevpeb_kvm_kernel_bitmap_size(t, &n) == 0, "size");
    if (version == 8) {
        CHECK(n == SEED_END && m_size(fd) >= SEED_END, "v8 size = highest memslot end %" PRIu64 " (kernel %" PRIu64 ")", n,
              m_size(fd));
    } else {
        CHECK(n >= SEED_END && n <= m_size(fd), "v6 size covered by sevpeb %" PRIu64 " <= kernel %" PRIu64, n, m_size(fd));
    }
    CHECK(sevpeb_kvm_kernel_bitmap_size(t, NULL) == -EINVAL, "size NULL");

    /* destination sync point: tracker -> kernel */
    for (int i = 0; i < 50; i++) {
        uint64_t g = rnd() % SEED_END, len = 1 + rnd() % 120;
        if (g + len > SEED_END) {
            len = SEED_END - g;
        }
        if (sevpeb_set_range(t, g, len, (int)(rnd() & 1)) != 0) {
            continue;
        }
    }
    CHECK(sevpeb_kvm_push_to_kernel(t) == 0, "v%d: push", version);
    for (uint64_t g = 0; g < SEED_END; g++) {
        if (in_slot(g)) {
            put_bit(expect, g, sevpeb_test(t, g) == 1);
        }
    }
    CHECK(model_equals(fd, expect, SEED_END, &diff), "v%d: kernel equals tracker after push (diff at %" PRIu64 ")", version,
          diff);

    /* reboot sync point */
    CHECK(sevpeb_kvm_reset_kernel(t) == 0, "v%d: reset", version);
    memset(expect, 0xff, SEED_END / 8 + 16);
    CHECK(model_equals(fd, expect, SEED_END, &diff), "v%d: all private after reset", version);
    free(expect);
    free(buf);
}

/* The raw quirks of the models, shown through the real ioctl entry point
 * (what sevpeb must work around). */
struct peb {
    uint64_t start_gfn, num_pages;
    void *enc_bitmap;
};

static void part_b(void)
{
    sevpeb_tracker *t;
    int fd = seed_vm(6, &t);
    CHECK(fd >= 0 && sizeof(struct peb) == 24, "v6 model fd %d, struct 24 bytes", fd);
    m_record_reset();
    CHECK(sevpeb_kvm_bind(t, fd, SEVPEB_KVM_SEED_V6) == 0, "bind v6");
    size_t n = m_recorded(NULL, NULL, 0);
    CHECK(n == 0, "bind of a seed dialect issues no ioctl (%zu)", n);

    /* quirk 1: v6 SET only clears */
    uint64_t word = 0;
    struct peb a = { 0, 64, &word };
    CHECK(ioctl(fd, 0x4018AEC6, &a) == 0 && m_bit(fd, 5) == 0, "raw v6 SET of zeros clears");
    word = ~0ull;
    CHECK(ioctl(fd, 0x4018AEC6, &a) == 0 && m_bit(fd, 5) == 0, "raw v6 SET of ones cannot set (quirk)");
    /* quirk 2: v6 SET scans its source from index start_gfn */
    CHECK(ioctl(fd, 0xAEC7, 0) == 0 && m_bit(fd, 5) == 1, "raw v6 RESET");
    word = ~(1ull << 1); /* meant: clear gfn 2 + 1; v6 starts scanning the source at index 2 */
    struct peb b = { 2, 8, &word };
    CHECK(ioctl(fd, 0x4018AEC6, &b) == 0 && m_bit(fd, 3) == 1, "raw v6 SET at start 2 skips source bits 0..1 (quirk)");
    struct peb bad = { 0, 8, (void *)8 };
    CHECK(ioctl(fd, 0x4018AEC5, &bad) == -1 && errno == EFAULT, "model copy_to_user: EFAULT on a bad pointer");

    seed_common(6, fd, t);
    /* + KVM_CHECK_EXTENSION(KVM_CAP_DIRTY_LOG_RING, _ACQ_REL) before each RESET */
    unsigned long allowed[] = { 0x4018AEC5ul, 0x4018AEC6ul, 0xAEC7ul, KVM_CHECK_EXTENSION }, stray = 0;
    CHECK(only_requests(fd, allowed, 4, &stray),
          "v6: only GET 0x4018AEC5 / SET 0x4018AEC6 / RESET 0xAEC7 / CHECK_EXTENSION reached the fd (%#lx)", stray);
    sevpeb_tracker_destroy(t);
    m_close(fd);
}

static void part_c(void)
{
    sevpeb_tracker *t;
    int fd = seed_vm(8, &t);
    CHECK(fd >= 0 && m_size(fd) == SEED_END, "v8 model sized by memslots: %" PRIu64, m_size(fd));
    m_record_reset();
    CHECK(sevpeb_kvm_bind(t, fd, SEVPEB_KVM_SEED_V7_V9) == 0 && m_recorded(NULL, NULL, 0) == 0, "bind v7..v9: no ioctl");

    /* quirk: misaligned start writes whole words at BIT_WORD(start) */
    uint64_t word = 0;
    struct peb a = { 70, 4, &word }; /* meant: clear gfn 70..73 */
    CHECK(ioctl(fd, 0x4018AEC7, &a) == 0, "raw v8 SET at 70");
    CHECK(m_bit(fd, 70) == 0 && m_bit(fd, 64) == 0 && m_bit(fd, 127) == 0,
          "raw v8 SET misaligned clobbers the whole word 64..127 (quirk)");
    struct peb reset = { 0, 0, NULL };
    CHECK(ioctl(fd, 0x4018AEC7, &reset) == 0 && m_bit(fd, 64) == 1, "raw v8 SET NULL resets");

    seed_common(8, fd, t);
    unsigned long allowed[] = { 0x4018AEC6ul, 0x4018AEC7ul }, stray = 0;
    CHECK(only_requests(fd, allowed, 2, &stray), "v8: only GET 0x4018AEC6 / SET 0x4018AEC7 reached the fd (%#lx)", stray);
    sevpeb_tracker_destroy(t);
    m_close(fd);
}

/* ---- part D: migrate from a v6 kernel to a v8 kernel ---- */

static void part_d(void)
{
    sevpeb_tracker *src, *dst;
    int sfd = seed_vm(6, &src), dfd = seed_vm(8, &dst);
    CHECK(sevpeb_kvm_bind(src, sfd, SEVPEB_KVM_SEED_V6) == 0 && sevpeb_kvm_bind(dst, dfd, SEVPEB_KVM_SEED_V7_V9) == 0,
          "bind source v6, destination v8");
    for (int i = 0; i < 40; i++) {
        m_hypercall(sfd, (rnd() % SEED_END) << 12, 1 + rnd() % 64, rnd() & 1);
    }
    testchan c = { 0 };
    int ok = sevpeb_kvm_sync_from_kernel(src) >= 0 && sevpeb_save_setup(src, testchan_write, &c) == 0;
    for (int it = 0; it < 3 && ok; it++) { /* the guest keeps running */
        for (int i = 0; i < 10; i++) {
            m_hypercall(sfd, (rnd() % SEED_END) << 12, 1 + rnd() % 64, rnd() & 1);
        }
        ok = sevpeb_kvm_sync_from_kernel(src) >= 0 && sevpeb_save_iterate(src, testchan_write, &c, 0) >= 0;
    }
    for (int i = 0; i < 5; i++) { /* last changes before the stop */
        m_hypercall(sfd, (rnd() % SEED_END) << 12, 1 + rnd() % 64, rnd() & 1);
    }
    ok = ok && sevpeb_kvm_sync_from_kernel(src) >= 0 && sevpeb_save_complete(src, testchan_write, &c) == 0;
    sevpeb_save_cleanup(src);
    CHECK(ok, "source: sync before setup, every iterate and complete");
    int r = sevpeb_load_setup(dst);
    while (r == 0) {
        r = sevpeb_load_state(dst, testchan_read, &c, SEVPEB_SECTION_VERSION);
    }
    sevpeb_load_cleanup(dst);
    CHECK(r == 1, "destination loaded (%d)", r);
    CHECK(sevpeb_kvm_push_to_kernel(dst) == 0, "destination push");
    int same = 1;
    uint64_t shared = 0;
    for (uint64_t g = 0; g < SEED_END; g++) {
        same &= !in_slot(g) || m_bit(sfd, g) == m_bit(dfd, g);
        shared += in_slot(g) && m_bit(dfd, g) == 0;
    }
    CHECK(same && shared > 0, "v8 destination kernel bitmap == v6 source kernel bitmap on every slot (%" PRIu64 " shared)",
          shared);
    free(c.data);
    sevpeb_tracker_destroy(src);
    sevpeb_tracker_destroy(dst);
    m_close(sfd);
    m_close(dfd);
}

/* ---- part E: memory attributes on a real VM fd + the 6.8 model ---- */
static void part_e(void)
{
    struct vm v;
    if (vm_create(&v) != 0) {
        CHECK(0, "create VM");
        return;
    }
    sevpeb_tracker *t = tracker_with_slots();
    /* make slot 1 touch slot 0's end region: add a third slot adjacent to slot 0 */
    sevpeb_slot_add(t, SLOT0_PAGES, 256);
    CHECK(m_gmem(v.fd) == 0, "augment the real VM fd with memory attributes");
    CHECK(sevpeb_kvm_bind(t, v.fd, SEVPEB_KVM_UPSTREAM) == 0, "bind upstream (real fd)");
    sevpeb_set_range(t, 10, 5, 0);
    sevpeb_set_range(t, SLOT0_PAGES - 2, 4, 0); /* a run across the touching slots */
    sevpeb_set_range(t, SLOT1_GFN + 100, 50, 0);
    sevpeb_set_range(t, SLOT1_GFN + SLOT1_PAGES - 1, 1, 0);
    m_record_reset();
    int r = sevpeb_kvm_apply_memory_attributes(t);
    /* stretch [0, 768): P S P S P = 5; stretch slot 1: P S P S = 4 */
    CHECK(r == 9, "9 coalesced ioctls for 4 shared runs in 2 stretches (%d)", r);
    int same = 1;
    for (uint64_t g = 0; g < SLOT0_PAGES + 256; g++) {
        same &= m_attr(v.fd, g) == (sevpeb_test(t, g) == 1 ? 8 : 0);
    }
    for (uint64_t g = SLOT1_GFN; g < SLOT1_GFN + SLOT1_PAGES; g++) {
        same &= m_attr(v.fd, g) == (sevpeb_test(t, g) == 1 ? 8 : 0);
    }
    CHECK(same, "attributes equal the tracker (PRIVATE = 8)");
    CHECK(m_attr(v.fd, SLOT0_PAGES + 256) == 0 && m_attr(v.fd, SLOT1_GFN - 1) == 0, "hole between stretches untouched");
    unsigned long req[64];
    size_t n = m_recorded(req, NULL, 64), sets = 0;
    for (size_t i = 0; i < n && i < 64; i++) {
        sets += req[i] == 0x4020AED2ul;
    }
    CHECK(sets == 9 && n == 10, "recorded 1 CHECK_EXTENSION + 9 x 0x4020AED2 (%zu, %zu)", n, sets);
    sevpeb_reset(t);
    CHECK(sevpeb_kvm_apply_memory_attributes(t) == 2, "all private: one ioctl per stretch");
    m_close(v.fd);
    sevpeb_tracker_destroy(t);
    vm_destroy(&v);
}


/* ---- part G: figures (not goals): exit handling cost, seed sync/push at scale ---- */
#include <time.h>
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void figures_exits(void)
{
    sevpeb_tracker *t = tracker_with_slots();
    struct kvm_run *run = aligned_alloc(64, 4096);
    memset(run, 0, 4096);
    const int n = 1000000;
    double t0 = now_s();
    for (int i = 0; i < n; i++) {
        hypercall_exit(run, 12, (SLOT1_GFN + (uint64_t)(i & 1023)) << 12, 1, (i & 2) ? SEVPEB_MAP_GPA_RANGE_ENCRYPTED : 0);
        sevpeb_kvm_handle_hypercall(t, run);
    }
    double t1 = now_s();
    for (int i = 0; i < n; i++) {
        msr_exit(run, KVM_EXIT_X86_WRMSR, 0x4b564d08u, (uint64_t)(i & 1));
        sevpeb_kvm_handle_msr_exit(t, run);
    }
    double t2 = now_s();
    printf("figure: sevpeb_kvm_handle_hypercall %.0f ns/exit, sevpeb_kvm_handle_msr_exit %.0f ns/exit (1e6 each)\n",
           (t1 - t0) * 1e9 / n, (t2 - t1) * 1e9 / n);
    CHECK(1, "figures");
    free(run);
    sevpeb_tracker_destroy(t);
}

static void figures_seed(int version)
{
    /* 64 GiB guest (16 Mi pages) in 2 slots, 4096 shared runs from hypercalls */
    const uint64_t pages = 1ull << 24;
    int fd = m_open(version);
    sevpeb_tracker *t = NULL;
    sevpeb_tracker_create(0, &t);
    struct kvm_userspace_memory_region r0 = { 0, 0, 0, (pages / 2) << 12, 0 }, r1 = { 1, 0, (pages / 2 + 4096) << 12, (pages / 2) << 12, 0 };
    ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r0);
    ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r1);
    sevpeb_slot_add(t, 0, pages / 2);
    sevpeb_slot_add(t, pages / 2 + 4096, pages / 2);
    CHECK(sevpeb_kvm_bind(t, fd, version == 6 ? SEVPEB_KVM_SEED_V6 : SEVPEB_KVM_SEED_V7_V9) == 0, "bind");
    for (int i = 0; i < 4096; i++) {
        m_hypercall(fd, (rnd() % (pages / 2)) << 12, 1 + rnd() % 32, 0);
    }
    m_record_reset();
    double t0 = now_s();
    CHECK(sevpeb_kvm_sync_from_kernel(t) == 1, "sync");
    double t1 = now_s();
    size_t nsync = m_recorded(NULL, NULL, 0);
    CHECK(sevpeb_kvm_sync_from_kernel(t) == 0, "second sync unchanged");
    for (int i = 0; i < 64; i++) {
        sevpeb_set_range(t, rnd() % (pages / 2), 1 + rnd() % 100, 1);
    }
    m_record_reset();
    double t2 = now_s();
    CHECK(sevpeb_kvm_push_to_kernel(t) == 0, "push");
    double t3 = now_s();
    size_t npush = m_recorded(NULL, NULL, 0);
    printf("figure: seed v%d, 64 GiB (2^24 pages, 2 slots): sync_from_kernel %.1f ms / %zu ioctls, "
           "push_to_kernel %.1f ms / %zu ioctls (time includes the model kernel's bit loops)\n",
           version, (t1 - t0) * 1e3, nsync, (t3 - t2) * 1e3, npush);
    sevpeb_tracker_destroy(t);
    m_close(fd);
}

/* ---- part F: what the upstream path issued, observed at the syscall entry ---- */
static int check_no_seed_numbers(const char *what, int allow_msr_filter)
{
    static unsigned long req[1 << 16];
    size_t n = m_recorded(req, NULL, 1 << 16), block = 0, msr_filter = 0, enable_cap = 0, check_ext = 0;
    for (size_t i = 0; i < n && i < (1 << 16); i++) {
        unsigned long r = req[i];
        unsigned type = (r >> 8) & 0xff, nr = r & 0xff;
        if (r == 0x4068AEA3ul) {
            enable_cap++;
        }
        if (r == 0xAE03ul) {
            check_ext++;
        }
        if (type == 0xAE && nr >= 0xc5 && nr <= 0xc9) {
            if (allow_msr_filter && r == 0x4188AEC6ul) {
                msr_filter++;
            } else {
                block++;
                fprintf(stderr, "  %s: issued %#lx\n", what, r);
            }
        }
    }
    printf("%s: %zu ioctls recorded (%zu KVM_CHECK_EXTENSION, %zu KVM_ENABLE_CAP, %zu KVM_X86_SET_MSR_FILTER); "
           "0xAEC5..0xAEC9 other than KVM_X86_SET_MSR_FILTER: %zu\n",
           what, n, check_ext, enable_cap, msr_filter, block);
    CHECK(n > 10 && check_ext > 0 && enable_cap > 0, "%s: the recorder saw the run (%zu)", what, n);
    CHECK(block == 0, "%s: no request with type 0xAE, nr 0xc5..0xc9 (any size/direction) issued", what);
    if (allow_msr_filter) {
        CHECK(msr_filter == 1, "%s: exactly one KVM_X86_SET_MSR_FILTER (0x4188AEC6)", what);
    }
    return block == 0;
}

int main(int argc, char **argv)
{
    int require_model = argc > 1 && strcmp(argv[1], "--require-model") == 0;
    int model = have_model();
    printf("sevpeb %s KVM test (%s)\n", sevpeb_version_string(),
           model ? "with kvm_interposer.so: real kernel + seed models + syscall recording" : "real kernel only");
    kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm_fd < 0) {
        SKIP("/dev/kvm cannot be opened (%s): real-kernel parts A, E, F not run", strerror(errno));
    } else {
        printf("part A: upstream path on the real kernel (filter installed by sevpeb)\n");
        if (model) {
            m_record_reset();
        }
        part_a(0);
        if (model) {
            check_no_seed_numbers("part F, upstream run 1 (sevpeb installs the MSR filter)", 1);
            m_record_reset();
        }
        printf("part A': upstream path on the real kernel (VMM-owned MSR filter)\n");
        part_a(1);
        if (model) {
            check_no_seed_numbers("part F, upstream run 2 (VMM-owned MSR filter)", 0);
        }
    }
    if (!model) {
        SKIP("kvm_interposer.so not preloaded: seed-dialect models (parts B, C, D) and memory-attribute model (E) not run");
        if (require_model) {
            CHECK(0, "--require-model given but the interposer is not loaded");
        }
    } else {
        printf("part B: seed v6 against the v6 kernel model\n");
        part_b();
        printf("part C: seed v7..v9 against the v8 kernel model\n");
        part_c();
        printf("part D: migration v6 source -> v8 destination\n");
        part_d();
        if (kvm_fd >= 0) {
            printf("part E: memory attributes (real VM fd + Linux 6.8 model)\n");
            part_e();
        }
        printf("part G: figures\n");
        figures_seed(6);
        figures_seed(8);
    }
    figures_exits();
    printf("%d passed, %d failed (%d skipped)\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
