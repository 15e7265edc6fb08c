/*
 * testcheck.h - the checks of the C tests: CHECK(cond, fmt, ...) counts a
 * pass or a failure; a failure prints where, the condition, the detail and
 * the library's last error (the first 30 failures, so a broken run stays
 * readable). Programs print "passed, failed" from the two counters.
 */
#ifndef SEVPEB_TESTCHECK_H
#define SEVPEB_TESTCHECK_H

#include <stdio.h>

#include "sevpeb.h"

static int passed, failed;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) {                                                             \
            passed++;                                                           \
        } else {                                                                \
            failed++;                                                           \
            if (failed <= 30) {                                                 \
                fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
                fprintf(stderr, __VA_ARGS__);                                   \
                fprintf(stderr, " (last error: %s)\n", sevpeb_last_error());   \
            }                                                                   \
        }                                                                       \
    } while (0)

#endif /* SEVPEB_TESTCHECK_H */
