/*
 * bench/compat/qemu/osdep.h - a minimal stand-in for QEMU's qemu/osdep.h,
 * enough to compile QEMU's own util/bitmap.c and util/bitops.c (taken from
 * the QEMU source tree at bench time, never committed) with gcc -O2 for the
 * side-by-side peer measurements. Our code, not QEMU's.
 */
#ifndef QEMU_OSDEP_H
#define QEMU_OSDEP_H
#include <stdarg.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <assert.h>
#include <glib.h>
#include "qemu/compiler.h"
#ifndef MIN
#define MIN(a, b) (((a) < (b)) ? (a) : (b))
#endif
#ifndef MAX
#define MAX(a, b) (((a) > (b)) ? (a) : (b))
#endif
#define qemu_build_not_reached() abort()
#define qemu_build_assert(test) while (!(test)) qemu_build_not_reached()
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))
#define ROUND_UP(n, d) (((n) + (d) - 1) & -(0 ? (n) : (d)))
#define QEMU_ALIGN_DOWN(n, m) ((n) / (m) * (m))
#define QEMU_ALIGN_UP(n, m) QEMU_ALIGN_DOWN((n) + (m) - 1, (m))
#endif
