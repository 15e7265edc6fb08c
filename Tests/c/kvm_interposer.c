/*
 * kvm_interposer.so - LD_PRELOAD ioctl interposer for the KVM tests.
 *
 * 1. Records the request number of EVERY ioctl the process issues (on any
 *    fd), so a test can prove which requests were sent through the real
 *    syscall entry point (libsevpeb.a calls ioctl through the PLT like any
 *    C code).
 * 2. Answers ioctls on private "model" fds (memfds registered here) with a
 *    faithful model of the out-of-tree SEV page-encryption-bitmap kernel
 *    code, v6 (March 2020) and v8 (May 2020; v7..v9 share the ABI), written
 *    from the patch text quoted in docs/SOURCES.md section 2
 *    and the list archive: struct kvm_page_enc_bitmap (24 bytes), copy_from_user
 *    / copy_to_user emulated with process_vm_readv/writev (a bad pointer gives
 *    EFAULT as in the kernel), kmalloc's 4 MiB limit (ENOMEM), the lazy (v6)
 *    and memslot-driven (v8) bitmap sizing, and the quirks: v6 SET only
 *    clears bits and scans its source from index start_gfn; v8 SET copies
 *    whole longs to BIT_WORD(start_gfn); v8 SET with a NULL bitmap resets.
 * 3. Augments a REAL VM fd with KVM per-page memory attributes (Linux 6.8,
 *    docs/SOURCES.md section 3.6), which this host's VM types lack: only
 *    KVM_CHECK_EXTENSION(KVM_CAP_MEMORY_ATTRIBUTES) and
 *    KVM_SET_MEMORY_ATTRIBUTES are answered by the model; everything else
 *    goes to the kernel.
 * 4. QEMU mode (environment, for Tests/qemu/test_kvm.py): KVMODEL_LOG=FILE
 *    appends one line per ioctl on the VM fd QEMU creates, and per ioctl of
 *    type 0xAE with nr 0xc5..0xc9 on any fd; KVMODEL_QEMU=6|8 gives that
 *    real VM fd the v6 / v8 kernel model (its GET/SET/RESET answered by the
 *    model, memslot ioctls seen by the model AND passed to the kernel,
 *    everything else passed through); KVMODEL_HC=FILE is a file of guest
 *    hypercalls "gpa npages enc", applied to the model (and removed) before
 *    the next model ioctl, as if the guest had made them. The log shows what
 *    the model received and its state after each change.
 * Everything else is passed to the real ioctl via dlsym(RTLD_NEXT).
 *
 * The test reaches the kvmodel_* functions with dlsym(RTLD_DEFAULT), so it
 * also runs (model parts skipped) without the interposer.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

/* ---- the seed ABI (docs/SOURCES.md section 2.1) -------------------------------- */
struct kvm_page_enc_bitmap {
    __u64 start_gfn;
    __u64 num_pages;
    union {
        void *enc_bitmap; /* one bit per page */
        __u64 padding2;
    };
};
#define V6_GET_PAGE_ENC_BITMAP   _IOW(KVMIO, 0xc5, struct kvm_page_enc_bitmap) /* 0x4018AEC5 */
#define V6_SET_PAGE_ENC_BITMAP   _IOW(KVMIO, 0xc6, struct kvm_page_enc_bitmap) /* 0x4018AEC6 */
#define V6_PAGE_ENC_BITMAP_RESET _IO(KVMIO, 0xc7)                              /* 0x0000AEC7 */
#define V8_GET_PAGE_ENC_BITMAP   _IOW(KVMIO, 0xc6, struct kvm_page_enc_bitmap) /* 0x4018AEC6 */
#define V8_SET_PAGE_ENC_BITMAP   _IOW(KVMIO, 0xc7, struct kvm_page_enc_bitmap) /* 0x4018AEC7 */

/* ---- memory attributes (Linux 6.8, docs/SOURCES.md section 3.6) ---------------- */
struct model_memory_attributes {
    __u64 address, size, attributes, flags;
};
#define MODEL_CAP_MEMORY_ATTRIBUTES 233
#define MODEL_SET_MEMORY_ATTRIBUTES _IOW(KVMIO, 0xd2, struct model_memory_attributes) /* 0x4020AED2 */
#define MODEL_ATTR_PRIVATE (1ULL << 3)
/* Linux 6.8: _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2), 160 bytes */
#define MODEL_SET_USER_MEMORY_REGION2 0x40a0ae49ul

#define BITS_PER_LONG 64
#define ALIGN_UP(x, a) (((x) + (a) - 1) / (a) * (a))
#define BIT_WORD(n) ((n) / BITS_PER_LONG)
#define KMALLOC_MAX (4ul << 20) /* x86-64, MAX_ORDER 11: 2^(10+12) bytes */

static int (*real_ioctl)(int, unsigned long, ...);

/* ---- recording ----------------------------------------------------------- */
#define REC_MAX (1 << 20)
static unsigned long rec_req[REC_MAX];
static int rec_fd[REC_MAX];
static size_t rec_n;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

/* ---- models --------------------------------------------------------------- */
enum kind { SEED_V6 = 6, SEED_V8 = 8, GMEM = 100 };
#define MAX_SLOTS 64
struct model {
    int fd;
    enum kind kind;
    /* seed: struct kvm_sev_info's page_enc_bmap / page_enc_bmap_size */
    unsigned long *bmap;
    uint64_t size; /* bits */
    struct { uint32_t slot; uint64_t base_gfn, npages; } slots[MAX_SLOTS];
    int nslots;
    /* gmem: attributes of pages [0, attr_pages) (1 byte each) */
    uint8_t *attrs;
    uint64_t attr_pages;
    uint64_t attr_calls;
};
#define MAX_MODELS 16
static struct model models[MAX_MODELS];

/* QEMU mode (see the file comment) */
static int qm_init_done, qm_version, qm_vm_fd = -1;
static FILE *qm_log;
static const char *qm_hc;

static struct model *find(int fd)
{
    for (int i = 0; i < MAX_MODELS; i++) {
        if (models[i].kind && models[i].fd == fd) {
            return &models[i];
        }
    }
    return NULL;
}

/* copy_from_user / copy_to_user: fail with EFAULT on a bad user pointer. */
static int copy_from_user(void *dst, const void *usrc, size_t n)
{
    if (n == 0) {
        return 0;
    }
    struct iovec l = { dst, n }, r = { (void *)usrc, n };
    return process_vm_readv(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}
static int copy_to_user(void *udst, const void *src, size_t n)
{
    if (n == 0) {
        return 0;
    }
    struct iovec l = { (void *)src, n }, r = { udst, n };
    return process_vm_writev(getpid(), &l, 1, &r, 1, 0) == (ssize_t)n ? 0 : -EFAULT;
}
static void *kmalloc(size_t sz)
{
    if (sz > KMALLOC_MAX) {
        return NULL;
    }
    return malloc(sz ? sz : 1);
}

static int test_bit(uint64_t i, const unsigned long *b) { return (b[i / 64] >> (i % 64)) & 1; }
static void set_bit(uint64_t i, unsigned long *b) { b[i / 64] |= 1ul << (i % 64); }
static void clear_bit(uint64_t i, unsigned long *b) { b[i / 64] &= ~(1ul << (i % 64)); }
static void bitmap_fill_(unsigned long *b, uint64_t nbits)
{
    memset(b, 0xff, ALIGN_UP(nbits, BITS_PER_LONG) / 8);
}

/* sev_resize_page_enc_bitmap (v6 09/14; v8 12/18): grow only, new bits 1. */
static int sev_resize_page_enc_bitmap(struct model *m, uint64_t new_size)
{
    if (m->size >= new_size) {
        return 0;
    }
    size_t sz = ALIGN_UP(new_size, BITS_PER_LONG) / 8;
    unsigned long *map = malloc(sz); /* vmalloc */
    if (!map) {
        return -ENOMEM;
    }
    memset(map, 0xff, sz); /* by default all pages are marked encrypted */
    if (m->size) {
        memcpy(map, m->bmap, ALIGN_UP(m->size, BITS_PER_LONG) / 8); /* bitmap_copy */
    }
    free(m->bmap);
    m->bmap = map;
    m->size = new_size;
    return 0;
}

/* svm_get_page_enc_bitmap: identical in v6 and v8 (only the nr moved). */
static int model_get(struct model *m, void *argp)
{
    struct kvm_page_enc_bitmap bmap;
    if (copy_from_user(&bmap, argp, sizeof(bmap))) {
        return -EFAULT;
    }
    uint64_t gfn_start = bmap.start_gfn, gfn_end = gfn_start + bmap.num_pages;
    size_t sz = ALIGN_UP(bmap.num_pages, BITS_PER_LONG) / 8;
    unsigned long *bitmap = kmalloc(sz);
    if (!bitmap) {
        return -ENOMEM;
    }
    memset(bitmap, 0xff, sz); /* by default all pages are marked encrypted */
    if (m->bmap) {
        uint64_t lim = m->size < gfn_end ? m->size : gfn_end;
        for (uint64_t i = gfn_start; i < lim; i++) { /* for_each_clear_bit_from */
            if (!test_bit(i, m->bmap)) {
                clear_bit(i - gfn_start, bitmap);
            }
        }
    }
    int ret = -EFAULT;
    unsigned n = bmap.num_pages % 8;
    size_t sz_bytes = ALIGN_UP(bmap.num_pages, 8) / 8;
    if (n) { /* keep the user's bits above num_pages in the last byte */
        unsigned char *bitmap_kernel = (unsigned char *)bitmap, bitmap_user;
        size_t offset = bmap.num_pages / 8;
        if (copy_from_user(&bitmap_user, (char *)bmap.enc_bitmap + offset, 1)) {
            goto out;
        }
        unsigned char mask = (unsigned char)((1u << n) - 1); /* GENMASK(n - 1, 0) */
        bitmap_user &= ~mask;
        bitmap_kernel[offset] &= mask;
        bitmap_kernel[offset] |= bitmap_user;
    }
    if (copy_to_user(bmap.enc_bitmap, bitmap, sz_bytes)) {
        goto out;
    }
    ret = 0;
out:
    free(bitmap);
    return ret;
}

/* v6 11/14 svm_set_page_enc_bitmap: clears only; scans the source from gfn_start. */
static int model_set_v6(struct model *m, void *argp)
{
    struct kvm_page_enc_bitmap bmap;
    if (copy_from_user(&bmap, argp, sizeof(bmap))) {
        return -EFAULT;
    }
    uint64_t gfn_start = bmap.start_gfn, gfn_end = gfn_start + bmap.num_pages;
    size_t sz = ALIGN_UP(bmap.num_pages, BITS_PER_LONG) / 8;
    unsigned long *bitmap = kmalloc(sz);
    if (!bitmap) {
        return -ENOMEM;
    }
    int ret = -EFAULT;
    if (copy_from_user(bitmap, bmap.enc_bitmap, sz)) {
        goto out;
    }
    ret = sev_resize_page_enc_bitmap(m, gfn_end);
    if (ret) {
        goto out;
    }
    for (uint64_t i = gfn_start; i < gfn_end - gfn_start; i++) { /* for_each_clear_bit_from(i, bitmap, gfn_end - gfn_start) */
        if (!test_bit(i, bitmap)) {
            clear_bit(i + gfn_start, m->bmap);
        }
    }
    ret = 0;
out:
    free(bitmap);
    return ret;
}

/* v6 12/14 svm_reset_page_enc_bitmap. */
static int model_reset_v6(struct model *m)
{
    if (m->size) {
        bitmap_fill_(m->bmap, m->size);
    }
    return 0;
}

/* v8 11/18 (and v9) svm_set_page_enc_bitmap: NULL = reset; bitmap_copy of whole longs. */
static int model_set_v8(struct model *m, void *argp)
{
    struct kvm_page_enc_bitmap bmap;
    if (copy_from_user(&bmap, argp, sizeof(bmap))) {
        return -EFAULT;
    }
    if (!bmap.enc_bitmap) { /* special case of resetting the complete bitmap */
        if (m->size) {
            bitmap_fill_(m->bmap, m->size);
        }
        return 0;
    }
    uint64_t gfn_start = bmap.start_gfn, gfn_end = gfn_start + bmap.num_pages;
    size_t sz = ALIGN_UP(bmap.num_pages, BITS_PER_LONG) / 8;
    unsigned long *bitmap = kmalloc(sz);
    if (!bitmap) {
        return -ENOMEM;
    }
    int ret = -EFAULT;
    if (copy_from_user(bitmap, bmap.enc_bitmap, sz)) {
        goto out;
    }
    ret = sev_resize_page_enc_bitmap(m, gfn_end);
    if (ret) {
        goto out;
    }
    /* bitmap_copy(page_enc_bmap + BIT_WORD(gfn_start), bitmap, gfn_end - gfn_start) */
    if (sz) {
        memcpy(m->bmap + BIT_WORD(gfn_start), bitmap, ALIGN_UP(gfn_end - gfn_start, BITS_PER_LONG) / 8);
    }
    ret = 0;
out:
    free(bitmap);
    return ret;
}

/* KVM_SET_USER_MEMORY_REGION on a seed model: v8's commit_memory_region hook
 * (v8 12/18) sizes the bitmap to the highest memslot end on KVM_MR_CREATE. */
static int model_set_memslot(struct model *m, void *argp)
{
    struct kvm_userspace_memory_region r;
    if (copy_from_user(&r, argp, sizeof(r))) {
        return -EFAULT;
    }
    if ((r.guest_phys_addr | r.memory_size) & 4095) {
        return -EINVAL;
    }
    int i;
    for (i = 0; i < m->nslots && m->slots[i].slot != r.slot; i++) {
    }
    int create = i == m->nslots;
    if (r.memory_size == 0) { /* KVM_MR_DELETE: the bitmap never shrinks */
        if (!create) {
            m->slots[i] = m->slots[--m->nslots];
        }
        return 0;
    }
    if (create) {
        if (m->nslots == MAX_SLOTS) {
            return -ENOSPC;
        }
        m->nslots++;
    }
    m->slots[i].slot = r.slot;
    m->slots[i].base_gfn = r.guest_phys_addr >> 12;
    m->slots[i].npages = r.memory_size >> 12;
    if (m->kind == SEED_V8 && create) {
        uint64_t end = 0;
        for (int j = 0; j < m->nslots; j++) {
            uint64_t e = m->slots[j].base_gfn + m->slots[j].npages;
            end = e > end ? e : end;
        }
        return sev_resize_page_enc_bitmap(m, end);
    }
    return 0;
}

/* KVM_SET_MEMORY_ATTRIBUTES (kvm_vm_ioctl_set_mem_attributes, Linux 6.8). */
static int model_set_attrs(struct model *m, void *argp)
{
    struct model_memory_attributes a;
    if (copy_from_user(&a, argp, sizeof(a))) {
        return -EFAULT;
    }
    if (a.flags) {
        return -EINVAL;
    }
    if (a.attributes & ~MODEL_ATTR_PRIVATE) {
        return -EINVAL;
    }
    if (a.size == 0 || a.address + a.size < a.address) {
        return -EINVAL;
    }
    if ((a.address | a.size) & 4095) {
        return -EINVAL;
    }
    uint64_t start = a.address >> 12, end = (a.address + a.size) >> 12;
    if (end > m->attr_pages) {
        size_t np = end + 1024;
        uint8_t *n = realloc(m->attrs, np);
        if (!n) {
            return -ENOMEM;
        }
        memset(n + m->attr_pages, 0, np - m->attr_pages);
        m->attrs = n;
        m->attr_pages = np;
    }
    memset(m->attrs + start, (int)a.attributes, end - start);
    m->attr_calls++;
    return 0;
}

static void qm_state(struct model *m);
static void qm_consume_hc(struct model *m);
static int qm_ioctl(struct model *m, unsigned long req, void *argp);

static int model_ioctl(struct model *m, unsigned long req, void *argp)
{
    if (m->fd == qm_vm_fd && qm_version) {
        return qm_ioctl(m, req, argp);
    }
    if (m->kind == GMEM) {
        if (req == KVM_CHECK_EXTENSION && (uintptr_t)argp == MODEL_CAP_MEMORY_ATTRIBUTES) {
            return (int)MODEL_ATTR_PRIVATE;
        }
        if (req == MODEL_SET_MEMORY_ATTRIBUTES) {
            return model_set_attrs(m, argp);
        }
        return 1 << 30; /* not ours: pass to the kernel */
    }
    if (req == KVM_SET_USER_MEMORY_REGION) {
        return model_set_memslot(m, argp);
    }
    if (req == KVM_CHECK_EXTENSION) {
        /* the 5.6 (v6) / 5.7 (v8) kernels: no dirty ring (192, 223) */
        return 0;
    }
    if (m->kind == SEED_V6) {
        if (req == V6_GET_PAGE_ENC_BITMAP) {
            return model_get(m, argp);
        }
        if (req == V6_SET_PAGE_ENC_BITMAP) {
            return model_set_v6(m, argp);
        }
        if (req == V6_PAGE_ENC_BITMAP_RESET) {
            return model_reset_v6(m);
        }
    } else {
        if (req == V8_GET_PAGE_ENC_BITMAP) {
            return model_get(m, argp);
        }
        if (req == V8_SET_PAGE_ENC_BITMAP) {
            return model_set_v8(m, argp);
        }
    }
    return -ENOTTY; /* kvm_arch_vm_ioctl default */
}

/* ---- QEMU mode ----------------------------------------------------------- */
static void qm_init(void)
{
    qm_init_done = 1;
    const char *log = getenv("KVMODEL_LOG"), *v = getenv("KVMODEL_QEMU");
    if (log) {
        qm_log = fopen(log, "a");
        if (qm_log) {
            setvbuf(qm_log, NULL, _IOLBF, 0);
        }
    }
    qm_version = v ? atoi(v) : 0;
    qm_hc = getenv("KVMODEL_HC");
}

static void qm_printf(const char *fmt, ...)
{
    if (!qm_log) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(qm_log, fmt, ap);
    va_end(ap);
}

/* "state size=N shared=a+n,b+m": the model kernel's clear (shared) runs. */
static void qm_state(struct model *m)
{
    qm_printf("state size=%llu shared=", (unsigned long long)m->size);
    int first = 1, count = 0;
    for (uint64_t i = 0; i < m->size && count < 64;) {
        if (test_bit(i, m->bmap)) {
            i++;
            continue;
        }
        uint64_t j = i;
        while (j < m->size && !test_bit(j, m->bmap)) {
            j++;
        }
        qm_printf("%s%llu+%llu", first ? "" : ",", (unsigned long long)i, (unsigned long long)(j - i));
        first = 0;
        count++;
        i = j;
    }
    qm_printf("\n");
}

static long model_hypercall_locked(struct model *m, uint64_t gpa, uint64_t npages, uint64_t enc);

static void qm_consume_hc(struct model *m)
{
    if (!qm_hc) {
        return;
    }
    FILE *f = fopen(qm_hc, "r");
    if (!f) {
        return;
    }
    unsigned long long gpa, npages, enc;
    while (fscanf(f, "%llx %llu %llu", &gpa, &npages, &enc) == 3) {
        long r = model_hypercall_locked(m, gpa, npages, enc);
        qm_printf("model hypercall gpa=0x%llx npages=%llu enc=%llu ret=%ld\n", gpa, npages, enc, r);
    }
    fclose(f);
    unlink(qm_hc);
    qm_state(m);
}

/* The real VM fd with a seed model: the model's numbers, memslots seen. */
static int qm_ioctl(struct model *m, unsigned long req, void *argp)
{
    int v6 = m->kind == SEED_V6;
    unsigned long get = v6 ? V6_GET_PAGE_ENC_BITMAP : V8_GET_PAGE_ENC_BITMAP;
    unsigned long set = v6 ? V6_SET_PAGE_ENC_BITMAP : V8_SET_PAGE_ENC_BITMAP;
    if (req == KVM_SET_USER_MEMORY_REGION || req == MODEL_SET_USER_MEMORY_REGION2) {
        /* the prefix of kvm_userspace_memory_region2 is the same struct */
        model_set_memslot(m, argp);
        return 1 << 30;
    }
    if (v6 && req == KVM_CHECK_EXTENSION && ((uintptr_t)argp == 192 || (uintptr_t)argp == 223)) {
        return 0; /* the v6 kernel (5.6) has no dirty ring */
    }
    if (req != get && req != set && !(v6 && req == V6_PAGE_ENC_BITMAP_RESET)) {
        return 1 << 30;
    }
    qm_consume_hc(m);
    struct kvm_page_enc_bitmap a = { 0 };
    if (req != V6_PAGE_ENC_BITMAP_RESET) {
        copy_from_user(&a, argp, sizeof(a));
    }
    int r = req == get ? model_get(m, argp)
          : req == set ? (v6 ? model_set_v6(m, argp) : model_set_v8(m, argp))
          : model_reset_v6(m);
    qm_printf("model %s gfn=%llu npages=%llu%s ret=%d\n",
              req == get ? "GET" : req == set ? "SET" : "RESET",
              (unsigned long long)a.start_gfn, (unsigned long long)a.num_pages,
              req == set && !a.enc_bitmap ? " NULL" : "", r);
    if (req != get) {
        qm_state(m);
    }
    return r;
}

/* Log one ioctl of interest (after it ran). */
static void qm_record(int fd, unsigned long req, void *arg, int ret)
{
    int seedblock = ((req >> 8) & 0xff) == KVMIO && (req & 0xff) >= 0xc5 && (req & 0xff) <= 0xc9;
    if (!qm_log || (fd != qm_vm_fd && !seedblock)) {
        return;
    }
    qm_printf("ioctl %s req=%#lx ret=%d", fd == qm_vm_fd ? "vm" : "other", req, ret);
    if (req == KVM_ENABLE_CAP) {
        struct kvm_enable_cap *c = arg;
        qm_printf(" cap=%u args0=%#llx", c->cap, (unsigned long long)c->args[0]);
    } else if (req == KVM_CHECK_EXTENSION) {
        qm_printf(" cap=%lu", (unsigned long)(uintptr_t)arg);
    } else if (req == KVM_X86_SET_MSR_FILTER) {
        struct kvm_msr_filter *f = arg;
        qm_printf(" flags=%u msrs=", f->flags);
        for (int i = 0; i < KVM_MSR_FILTER_MAX_RANGES && f->ranges[i].nmsrs; i++) {
            qm_printf("%s%#x/%u", i ? "," : "", f->ranges[i].base, f->ranges[i].nmsrs);
        }
    }
    qm_printf("\n");
}

/* ---- the interposed entry point ----------------------------------------- */
int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real_ioctl) {
        real_ioctl = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
    }
    pthread_mutex_lock(&mu);
    if (!qm_init_done) {
        qm_init();
    }
    if (rec_n < REC_MAX) {
        rec_req[rec_n] = req;
        rec_fd[rec_n] = fd;
        rec_n++;
    }
    struct model *m = find(fd);
    int r = 1 << 30;
    if (m) {
        r = model_ioctl(m, req, arg);
    }
    if (r != 1 << 30) {
        qm_record(fd, req, arg, r);
        pthread_mutex_unlock(&mu);
        if (r < 0) {
            errno = -r;
            return -1;
        }
        return r;
    }
    pthread_mutex_unlock(&mu);
    int ret = real_ioctl(fd, req, arg);
    if (qm_log || qm_version) {
        int e = errno;
        pthread_mutex_lock(&mu);
        if (req == KVM_CREATE_VM && ret >= 0 && qm_vm_fd < 0) {
            qm_vm_fd = ret;
            qm_printf("vm fd=%d model=%s\n", ret, qm_version == 6 ? "seed-v6" : qm_version == 8 ? "seed-v8" : "none");
            for (int i = 0; qm_version && i < MAX_MODELS; i++) {
                if (!models[i].kind) {
                    memset(&models[i], 0, sizeof(models[i]));
                    models[i].fd = ret;
                    models[i].kind = qm_version == 6 ? SEED_V6 : SEED_V8;
                    break;
                }
            }
        }
        qm_record(fd, req, arg, ret < 0 ? -e : ret);
        pthread_mutex_unlock(&mu);
        errno = e;
    }
    return ret;
}

/* ---- test API ------------------------------------------------------------ */

/* A private fd answered by the v6 (version 6) or v8 (version 8) model. */
int kvmodel_open(int version)
{
    if (version != 6 && version != 8) {
        return -EINVAL;
    }
    int fd = memfd_create(version == 6 ? "kvmodel-seed-v6" : "kvmodel-seed-v8", MFD_CLOEXEC);
    if (fd < 0) {
        return -errno;
    }
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_MODELS; i++) {
        if (!models[i].kind) {
            memset(&models[i], 0, sizeof(models[i]));
            models[i].fd = fd;
            models[i].kind = version == 6 ? SEED_V6 : SEED_V8;
            pthread_mutex_unlock(&mu);
            return fd;
        }
    }
    pthread_mutex_unlock(&mu);
    close(fd);
    return -ENOSPC;
}

/* Give a real VM fd the memory-attributes model. */
int kvmodel_gmem(int vm_fd)
{
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MAX_MODELS; i++) {
        if (!models[i].kind) {
            memset(&models[i], 0, sizeof(models[i]));
            models[i].fd = vm_fd;
            models[i].kind = GMEM;
            pthread_mutex_unlock(&mu);
            return 0;
        }
    }
    pthread_mutex_unlock(&mu);
    return -ENOSPC;
}

/* Forget a model (and close it if it is a seed model). */
int kvmodel_close(int fd)
{
    pthread_mutex_lock(&mu);
    struct model *m = find(fd);
    if (!m) {
        pthread_mutex_unlock(&mu);
        return -ENOENT;
    }
    int seed = m->kind != GMEM;
    free(m->bmap);
    free(m->attrs);
    memset(m, 0, sizeof(*m));
    pthread_mutex_unlock(&mu);
    if (seed) {
        close(fd);
    }
    return 0;
}

/*
 * The guest's KVM_HC_PAGE_ENC_STATUS(gpa, npages, enc), as v6 08/14
 * svm_page_enc_status_hc handles it in the kernel (MMIO GFNs allowed, so no
 * pfn check here; the v6 13/14 MSR gate is left to the caller). Returns the
 * value the guest would get in RAX.
 */
long kvmodel_hypercall(int fd, uint64_t gpa, uint64_t npages, uint64_t enc)
{
    pthread_mutex_lock(&mu);
    long ret = model_hypercall_locked(find(fd), gpa, npages, enc);
    pthread_mutex_unlock(&mu);
    return ret;
}

static long model_hypercall_locked(struct model *m, uint64_t gpa, uint64_t npages, uint64_t enc)
{
    long ret = 0;
    if (!m || m->kind == GMEM) {
        ret = -EINVAL;
        goto out;
    }
    if (!npages) {
        goto out;
    }
    uint64_t gfn_start = gpa >> 12, gfn_end = gfn_start + npages;
    if (gfn_end <= gfn_start) { /* overflow */
        ret = -EINVAL;
        goto out;
    }
    ret = sev_resize_page_enc_bitmap(m, gfn_end);
    if (ret) {
        goto out;
    }
    for (uint64_t i = gfn_start; i < gfn_end; i++) {
        if (enc) {
            set_bit(i, m->bmap);
        } else {
            clear_bit(i, m->bmap);
        }
    }
out:
    return ret;
}

/* The model kernel's bit for gfn (1 encrypted; 1 beyond its size), or -ENOENT. */
int kvmodel_bit(int fd, uint64_t gfn)
{
    pthread_mutex_lock(&mu);
    struct model *m = find(fd);
    int r = !m ? -ENOENT : (gfn < m->size ? test_bit(gfn, m->bmap) : 1);
    pthread_mutex_unlock(&mu);
    return r;
}

/* First i < npages where the model kernel's bit of gfn + i differs from bit i
 * of bits (LSB first; bits NULL: all 1), or -1; 0 if fd is no model. One lock
 * for the whole range (the seed fuzz target's bulk check: kvmodel_bit per
 * page was a third of its time in lock round trips). */
int64_t kvmodel_diff(int fd, uint64_t gfn, uint64_t npages, const uint8_t *bits)
{
    int64_t r = -1;
    pthread_mutex_lock(&mu);
    struct model *m = find(fd);
    for (uint64_t i = 0; i < npages; i++) {
        int want = bits ? (bits[i >> 3] >> (i & 7)) & 1 : 1;
        int have = !m ? -ENOENT : (gfn + i < m->size ? test_bit(gfn + i, m->bmap) : 1);
        if (have != want) {
            r = (int64_t)i;
            break;
        }
    }
    pthread_mutex_unlock(&mu);
    return r;
}

/* The model kernel's page_enc_bmap_size (bits), or 0. */
uint64_t kvmodel_size(int fd)
{
    pthread_mutex_lock(&mu);
    struct model *m = find(fd);
    uint64_t r = m ? m->size : 0;
    pthread_mutex_unlock(&mu);
    return r;
}

/* Memory attributes of gfn on a gmem-augmented fd (-ENOENT if none). */
int kvmodel_attr(int fd, uint64_t gfn)
{
    pthread_mutex_lock(&mu);
    struct model *m = find(fd);
    int r = !m ? -ENOENT : (gfn < m->attr_pages ? m->attrs[gfn] : 0);
    pthread_mutex_unlock(&mu);
    return r;
}

/* Copy up to max recorded (fd, request) pairs; returns the total recorded. */
size_t kvmodel_recorded(unsigned long *req, int *fds, size_t max)
{
    pthread_mutex_lock(&mu);
    size_t n = rec_n;
    for (size_t i = 0; i < n && i < max; i++) {
        req[i] = rec_req[i];
        if (fds) {
            fds[i] = rec_fd[i];
        }
    }
    pthread_mutex_unlock(&mu);
    return n;
}

void kvmodel_record_reset(void)
{
    pthread_mutex_lock(&mu);
    rec_n = 0;
    pthread_mutex_unlock(&mu);
}
