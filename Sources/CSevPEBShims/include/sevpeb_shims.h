/*
 * Fixed-arity libc wrappers for Swift (variadic ioctl, errno, pthread mutex,
 * thread-local error text). Internal to the library: nothing here is part of
 * the public ABI (include/sevpeb.h).
 */
#ifndef SEVPEB_SHIMS_H
#define SEVPEB_SHIMS_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "../../../include/sevpeb.h"

/* "MAJOR.MINOR.PATCH" spelled from the header's version macros, the one
 * source of the version (the Makefile reads them too). */
#define SEVPEB_SHIM_STR_(x) #x
#define SEVPEB_SHIM_STR(x) SEVPEB_SHIM_STR_(x)
static inline const char *sevpeb_shim_version_string(void)
{
    return SEVPEB_SHIM_STR(SEVPEB_VERSION_MAJOR) "." SEVPEB_SHIM_STR(SEVPEB_VERSION_MINOR) "."
           SEVPEB_SHIM_STR(SEVPEB_VERSION_PATCH);
}

/* ioctl with a pointer argument; returns the result or -errno. */
static inline int sevpeb_shim_ioctl_ptr(int fd, unsigned long req, void *arg)
{
    int r = ioctl(fd, req, arg);
    return r < 0 ? -errno : r;
}

/* ioctl with an integer argument; returns the result or -errno. */
static inline int sevpeb_shim_ioctl_val(int fd, unsigned long req, unsigned long val)
{
    int r = ioctl(fd, req, val);
    return r < 0 ? -errno : r;
}

/* A heap-allocated pthread mutex (stable address, as pthread requires). */
static inline pthread_mutex_t *sevpeb_shim_mutex_new(void)
{
    pthread_mutex_t *m = (pthread_mutex_t *)malloc(sizeof(*m));
    if (m && pthread_mutex_init(m, NULL) != 0) {
        free(m);
        return NULL;
    }
    return m;
}
static inline void sevpeb_shim_mutex_free(pthread_mutex_t *m)
{
    if (m) {
        pthread_mutex_destroy(m);
        free(m);
    }
}
static inline void sevpeb_shim_mutex_lock(pthread_mutex_t *m) { pthread_mutex_lock(m); }
static inline void sevpeb_shim_mutex_unlock(pthread_mutex_t *m) { pthread_mutex_unlock(m); }

/* ---- the tracker's update gate (Tracker.swift, "fast path") ----
 * Lets single-word page updates run without the mutex while keeping every
 * locked operation exclusive: an updater announces itself in its thread's
 * counter and proceeds only if the gate is open; a locked operation closes
 * the gate (if open) and waits until every counter is 0, so it never overlaps
 * a fast update (a per-thread-slot reader count: percpu-rwsem's idea, 8
 * slots); a locked update reopens it when done. */
#define SEVPEB_GATE_SLOTS 8
struct sevpeb_gate_slot {
    unsigned long inside;                   /* fast updaters in flight */
    char pad[64 - sizeof(unsigned long)];   /* one cache line each (the gate is 64-aligned) */
};
typedef struct sevpeb_gate {
    struct sevpeb_gate_slot slot[SEVPEB_GATE_SLOTS];
    int closed;                             /* 1 while a locked operation runs */
} sevpeb_gate;

static inline sevpeb_gate *sevpeb_shim_gate_new(void)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(sevpeb_gate)) != 0) {
        return NULL;
    }
    memset(p, 0, sizeof(sevpeb_gate));
    return (sevpeb_gate *)p;
}
static inline void sevpeb_shim_gate_free(sevpeb_gate *g) { free(g); }
static inline size_t sevpeb_shim_gate_size(void) { return sizeof(sevpeb_gate); }

/* This thread's counter: threads are spread over the slots in the order they
 * first update (threads sharing a slot stay correct, they only share a line). */
static inline unsigned sevpeb_shim_gate_slot(void)
{
    static _Thread_local unsigned mine;     /* 1 + slot; 0 = not chosen yet */
    static unsigned next;
    if (__builtin_expect(mine == 0, 0)) {
        mine = 1 + __atomic_fetch_add(&next, 1, __ATOMIC_RELAXED) % SEVPEB_GATE_SLOTS;
    }
    return mine - 1;
}
/* Enter for one fast update: the slot + 1, or 0 if the gate is closed (take
 * the mutex instead). Announce first, then look (both seq_cst; the closer
 * stores, then looks: one of the two sees the other). */
static inline unsigned sevpeb_shim_gate_enter(sevpeb_gate *g)
{
    unsigned i = sevpeb_shim_gate_slot();
    __atomic_fetch_add(&g->slot[i].inside, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&g->closed, __ATOMIC_SEQ_CST)) {
        __atomic_fetch_sub(&g->slot[i].inside, 1, __ATOMIC_RELEASE);
        return 0;
    }
    return i + 1;
}
static inline void sevpeb_shim_gate_leave(sevpeb_gate *g, unsigned token)
{
    __atomic_fetch_sub(&g->slot[token - 1].inside, 1, __ATOMIC_RELEASE);
}
/* With the mutex held: close the gate and wait out the fast updates in flight
 * (each is a few dozen instructions; yield if one was preempted). A gate a
 * locked operation left closed needs neither (no fast update entered since):
 * only updates reopen it, so a run of queries pays the fence once. */
static inline void sevpeb_shim_gate_close(sevpeb_gate *g)
{
    if (__atomic_load_n(&g->closed, __ATOMIC_RELAXED)) {
        return;
    }
    __atomic_store_n(&g->closed, 1, __ATOMIC_SEQ_CST);
    for (unsigned i = 0; i < SEVPEB_GATE_SLOTS; i++) {
        for (unsigned spins = 0; __atomic_load_n(&g->slot[i].inside, __ATOMIC_ACQUIRE) != 0; spins++) {
            if (spins < 64) {
                __builtin_ia32_pause();
            } else {
                sched_yield();
            }
        }
    }
}
/* With the mutex held, at the end of a locked update (the fast path's users
 * want it open; other locked operations leave it closed). */
static inline void sevpeb_shim_gate_open(sevpeb_gate *g)
{
    __atomic_store_n(&g->closed, 0, __ATOMIC_RELEASE);
}
/* Atomic accesses of the fast path to words that other fast updates change
 * (block words and a group's dirty / hashOK / hashValid); relaxed: the
 * gate's release / acquire orders them for the locked operations. */
static inline uint64_t sevpeb_shim_fetch_or64(uint64_t *p, uint64_t m) { return __atomic_fetch_or(p, m, __ATOMIC_RELAXED); }
static inline uint64_t sevpeb_shim_fetch_and64(uint64_t *p, uint64_t m) { return __atomic_fetch_and(p, m, __ATOMIC_RELAXED); }
static inline uint64_t sevpeb_shim_load64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline _Bool sevpeb_shim_load_bool(const _Bool *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void sevpeb_shim_store_bool(_Bool *p, _Bool v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

static inline size_t sevpeb_shim_mutex_size(void) { return sizeof(pthread_mutex_t); }

/* Thread-local last-error text (defined in shims.c). */
#define SEVPEB_SHIM_ERRBUF 512
char *spbshim_errbuf(void);


/* ------------------------------------------------------------------------ */
/* KVM layer (Sources/SevPEB/KVM). Structs and constants the Debian 6.1      */
/* linux-libc-dev headers lack are defined here under sevpeb names, each    */
/* citing docs/SOURCES.md; everything else comes from the   */
/* system's <linux/kvm.h>. The ioctl numbers themselves are computed in     */
/* Swift (KVM/IoctlNumbers.swift); the sevpeb_shim_sys_* functions below    */
/* only expose the system header's own macros so a test can compare.        */
/* ------------------------------------------------------------------------ */
#include <linux/kvm.h>

/*
 * Seed dialect argument (docs/SOURCES.md §2.1; v6 09/14, unchanged through v9):
 * 24 bytes on 32- and 64-bit userspace. bit i of enc_bitmap = gfn
 * start_gfn + i, 1 = encrypted. Never merged, so no system header has it.
 */
struct sevpeb_kvm_page_enc_bitmap {
    __u64 start_gfn;
    __u64 num_pages;
    union {
        void *enc_bitmap; /* one bit per page */
        __u64 padding2;
    };
};

/*
 * Per-page memory attributes (Linux 6.8, commit 5a475554db1e; docs/SOURCES.md
 * §3.6): KVM_SET_MEMORY_ATTRIBUTES _IOW(KVMIO, 0xd2, this) = 0x4020AED2.
 */
struct sevpeb_kvm_memory_attributes {
    __u64 address;
    __u64 size;
    __u64 attributes;
    __u64 flags;
};
#define SEVPEB_KVM_CAP_MEMORY_ATTRIBUTES    233          /* docs/SOURCES.md §3.6 */
#define SEVPEB_KVM_MEMORY_ATTRIBUTE_PRIVATE (1ULL << 3)  /* docs/SOURCES.md §3.6 */

/* ioctl with no argument (_IO requests); returns the result or -errno. */
static inline int sevpeb_shim_ioctl_none(int fd, unsigned long req)
{
    int r = ioctl(fd, req, 0);
    return r < 0 ? -errno : r;
}

/* The system header's values, for the pinning tests only. */
static inline unsigned long sevpeb_shim_sys_KVM_CHECK_EXTENSION(void) { return KVM_CHECK_EXTENSION; }
static inline unsigned long sevpeb_shim_sys_KVM_ENABLE_CAP(void) { return KVM_ENABLE_CAP; }
static inline unsigned long sevpeb_shim_sys_KVM_X86_SET_MSR_FILTER(void) { return KVM_X86_SET_MSR_FILTER; }
static inline unsigned long sevpeb_shim_sys_KVM_RESET_DIRTY_RINGS(void) { return KVM_RESET_DIRTY_RINGS; }
static inline unsigned long sevpeb_shim_sys_KVM_S390_PV_COMMAND(void) { return KVM_S390_PV_COMMAND; }
static inline unsigned long sevpeb_shim_sys_KVM_SET_USER_MEMORY_REGION(void) { return KVM_SET_USER_MEMORY_REGION; }
static inline unsigned long sevpeb_shim_sys_KVM_CREATE_VM(void) { return KVM_CREATE_VM; }
static inline unsigned long sevpeb_shim_sys_KVM_CREATE_VCPU(void) { return KVM_CREATE_VCPU; }
static inline unsigned long sevpeb_shim_sys_KVM_GET_VCPU_MMAP_SIZE(void) { return KVM_GET_VCPU_MMAP_SIZE; }

/*
 * Field access into the VMM's struct kvm_run (layout from <linux/kvm.h>),
 * without copying the 2 KiB+ struct or its unions through Swift.
 */
static inline __u32 *sevpeb_shim_run_exit_reason(struct kvm_run *r) { return &r->exit_reason; }
static inline __u64 *sevpeb_shim_run_hypercall_nr(struct kvm_run *r) { return &r->hypercall.nr; }
static inline __u64 *sevpeb_shim_run_hypercall_args(struct kvm_run *r) { return r->hypercall.args; }
static inline __u64 *sevpeb_shim_run_hypercall_ret(struct kvm_run *r) { return &r->hypercall.ret; }
static inline __u8 *sevpeb_shim_run_msr_error(struct kvm_run *r) { return &r->msr.error; }
static inline __u32 *sevpeb_shim_run_msr_index(struct kvm_run *r) { return &r->msr.index; }
static inline __u64 *sevpeb_shim_run_msr_data(struct kvm_run *r) { return &r->msr.data; }
static inline size_t sevpeb_shim_kvm_run_size(void) { return sizeof(struct kvm_run); }

#endif /* SEVPEB_SHIMS_H */
