/* The seed kernel models of Tests/c/kvm_interposer.c (linked into the seed
 * fuzz target, whose ioctl() it interposes), as a Swift-importable module. */
#ifndef SEVPEB_FUZZ_KVMODEL_H
#define SEVPEB_FUZZ_KVMODEL_H
#include <stdint.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

int kvmodel_open(int version);
int kvmodel_close(int fd);
long kvmodel_hypercall(int fd, uint64_t gpa, uint64_t npages, uint64_t enc);
int kvmodel_bit(int fd, uint64_t gfn);
uint64_t kvmodel_size(int fd);

/* KVM_SET_USER_MEMORY_REGION on a model fd (sizes the v8 bitmap). */
static inline int kvmodel_memslot(int fd, uint32_t slot, uint64_t base_gfn, uint64_t npages)
{
    struct kvm_userspace_memory_region r = { slot, 0, base_gfn << 12, npages << 12, 0 };
    return ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r);
}


/* First i < npages where the model's bit of gfn + i differs from bit i of
 * bits (LSB first; bits NULL: all 1), or -1 (in the interposer, no coverage). */
int64_t kvmodel_diff(int fd, uint64_t gfn, uint64_t npages, const uint8_t *bits);
#endif
