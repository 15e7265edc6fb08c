/*
 * Fixed-arity libc wrappers for Swift (variadic ioctl, errno, pthread mutex,
 * thread-local error text). Internal to the library: nothing here is part of
 * the public ABI (include/sevpeb.h).
 */
#ifndef SEVPEB_SHIMS_H
#define SEVPEB_SHIMS_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

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

static inline int sevpeb_shim_errno(void) { return errno; }

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

static inline size_t sevpeb_shim_mutex_size(void) { return sizeof(pthread_mutex_t); }

/* Thread-local last-error text (defined in shims.c). */
#define SEVPEB_SHIM_ERRBUF 512
char *spbshim_errbuf(void);

#endif /* SEVPEB_SHIMS_H */
