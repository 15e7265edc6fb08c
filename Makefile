# sevpeb: build the Embedded-Swift static archive, install it, run C checks.
#
#   make                      out/libsevpeb.a + out/sevpeb.pc (Embedded Swift, libc only)
#   make install PREFIX=DIR   DIR/include/sevpeb.h, DIR/lib/libsevpeb.a, DIR/lib/pkgconfig/sevpeb.pc
#   make check PREFIX=DIR     build Tests/c against the installed library through pkg-config and run it
#                             (plain, then ASan+UBSan)
#   make kvm-check PREFIX=DIR the KVM layer's C tests: real /dev/kvm, then the ioctl interposer
#                             (seed-dialect kernel models, syscall recording), then ASan+UBSan
PREFIX ?= /usr/local
# The version is include/sevpeb.h's SEVPEB_VERSION_MAJOR/MINOR/PATCH, read from there.
VERSION := $(shell sed -n 's/^\#define SEVPEB_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\)$$/\2/p' include/sevpeb.h | paste -sd.)
OUT := out
EMB := .build-embedded
SWIFT ?= swift
CC ?= gcc
SOURCES := $(shell find Sources/SevPEB Sources/CSevPEBShims Sources/CSevPEBHash Sources/CSevPEB include -type f) Package.swift

all: $(OUT)/libsevpeb.a $(OUT)/sevpeb.pc

$(OUT)/libsevpeb.a: $(SOURCES)
	@mkdir -p $(OUT)
	SEVPEB_EMBEDDED=1 $(SWIFT) build -c release --product SevPEB --scratch-path $(EMB)
	# Prelink into one object and keep only the public API global: Embedded
	# Swift emits its runtime helpers as weak globals, which must not leak.
	ld -r -o $(OUT)/sevpeb.o --whole-archive $(EMB)/release/libSevPEB.a --no-whole-archive
	objcopy --wildcard --keep-global-symbol='sevpeb_*' --strip-debug $(OUT)/sevpeb.o
	rm -f $@ && ar rcs $@ $(OUT)/sevpeb.o
	@echo "exported: $$(nm -g --defined-only $(OUT)/sevpeb.o | grep -c ' T sevpeb_') sevpeb_* functions"

$(OUT)/sevpeb.pc: Makefile
	@mkdir -p $(OUT)
	printf '%s\n' 'prefix=$(PREFIX)' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include' '' \
	  'Name: sevpeb' 'Description: SEV page-encryption bitmap tracker and migration section (Embedded Swift, C ABI)' \
	  'Version: $(VERSION)' 'Cflags: -I$${includedir}' 'Libs: -L$${libdir} -lsevpeb -lpthread' > $@

install: $(OUT)/libsevpeb.a
	@rm -f $(OUT)/sevpeb.pc && $(MAKE) --no-print-directory $(OUT)/sevpeb.pc PREFIX=$(PREFIX)
	install -d $(PREFIX)/include $(PREFIX)/lib/pkgconfig
	install -m 644 include/sevpeb.h $(PREFIX)/include/sevpeb.h
	install -m 644 $(OUT)/libsevpeb.a $(PREFIX)/lib/libsevpeb.a
	install -m 644 $(OUT)/sevpeb.pc $(PREFIX)/lib/pkgconfig/sevpeb.pc

CTEST_FLAGS := -std=gnu11 -O1 -g -Wall -Wextra -Werror -pthread
check: install symbols
	@mkdir -p $(OUT)
	$(CC) $(CTEST_FLAGS) Tests/c/ctest.c -o $(OUT)/ctest $$(PKG_CONFIG_PATH=$(PREFIX)/lib/pkgconfig pkg-config --cflags --libs sevpeb)
	$(OUT)/ctest
	$(CC) $(CTEST_FLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all Tests/c/ctest.c -o $(OUT)/ctest-asan \
	  $$(PKG_CONFIG_PATH=$(PREFIX)/lib/pkgconfig pkg-config --cflags --libs sevpeb)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 $(OUT)/ctest-asan

# The archive must export only sevpeb_* and need only libc (+ libpthread).
LIBC_SYMS := __stack_chk_fail __tls_get_addr arc4random_buf calloc free malloc memmove memset memcpy \
	posix_memalign pthread_mutex_destroy pthread_mutex_init pthread_mutex_lock pthread_mutex_unlock \
	ioctl __errno_location sched_yield
symbols: $(OUT)/libsevpeb.a
	@bad=$$(nm -g --defined-only $(OUT)/sevpeb.o | awk '{print $$3}' | grep -v '^sevpeb_' || true); \
	if [ -n "$$bad" ]; then echo "non-API global symbols exported: $$bad"; exit 1; fi
	@und=$$(nm -u $(OUT)/sevpeb.o | awk '{print $$2}' | grep -vxF $(patsubst %,-e %,$(LIBC_SYMS)) || true); \
	if [ -n "$$und" ]; then echo "undefined symbols beyond libc: $$und"; exit 1; fi
	@echo "symbols ok: $$(nm -g --defined-only $(OUT)/sevpeb.o | wc -l) global, all sevpeb_*; undefined: libc only"

# KVM layer, C level (every sevpeb_kvm_* function through the installed header
# and archive): once against the real /dev/kvm alone, then with the ioctl
# interposer preloaded (seed v6 / v8 kernel models on private fds, a Linux 6.8
# memory-attributes model on a real VM fd, and a recording of every ioctl
# request the process issued), then the same under ASan+UBSan.
KVM_PC = $$(PKG_CONFIG_PATH=$(PREFIX)/lib/pkgconfig pkg-config --cflags --libs sevpeb)
kvm-check: install
	@mkdir -p $(OUT)
	$(CC) -std=gnu11 -O2 -g -Wall -Wextra -Werror -shared -fPIC Tests/c/kvm_interposer.c -o $(OUT)/kvm_interposer.so -ldl -pthread
	$(CC) $(CTEST_FLAGS) Tests/c/kvm_test.c -o $(OUT)/kvm_test $(KVM_PC) -ldl
	$(CC) $(CTEST_FLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all Tests/c/kvm_test.c -o $(OUT)/kvm_test-asan $(KVM_PC) -ldl
	$(OUT)/kvm_test
	LD_PRELOAD=$(abspath $(OUT)/kvm_interposer.so) $(OUT)/kvm_test --require-model
	ASAN_OPTIONS=detect_leaks=1:verify_asan_link_order=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  LD_PRELOAD=$(abspath $(OUT)/kvm_interposer.so) $(OUT)/kvm_test-asan --require-model

# Injected allocation failures (Tests/c/allocfail.c): the test links the
# installed archive with --wrap for calloc/malloc/posix_memalign, so every
# allocation the library makes can be failed in turn; the archive itself has
# no hook. Plain, then ASan+LSan+UBSan, both with the ioctl interposer's
# kernel models preloaded (seed sync/push, memory attributes).
ALLOC_WRAP := -Wl,--wrap=calloc,--wrap=malloc,--wrap=posix_memalign
alloc-check: install
	@mkdir -p $(OUT)
	$(CC) -std=gnu11 -O2 -g -Wall -Wextra -Werror -shared -fPIC Tests/c/kvm_interposer.c -o $(OUT)/kvm_interposer.so -ldl -pthread
	$(CC) $(CTEST_FLAGS) Tests/c/allocfail.c -o $(OUT)/allocfail $(KVM_PC) -ldl $(ALLOC_WRAP)
	$(CC) $(CTEST_FLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all Tests/c/allocfail.c -o $(OUT)/allocfail-asan \
	  $(KVM_PC) -ldl $(ALLOC_WRAP)
	LD_PRELOAD=$(abspath $(OUT)/kvm_interposer.so) $(OUT)/allocfail --seed $(or $(SEED),1)
	@if LD_PRELOAD=$(abspath $(OUT)/kvm_interposer.so) $(OUT)/allocfail --negative-control >$(OUT)/allocfail-neg.log 2>&1; \
	then echo "negative control passed: the state check cannot fail"; exit 1; \
	else echo "negative control: $$(grep -c 'state changed by the failed call' $(OUT)/allocfail-neg.log) state changes detected (expected)"; fi
	ASAN_OPTIONS=detect_leaks=1:verify_asan_link_order=0 UBSAN_OPTIONS=print_stacktrace=1 \
	  LD_PRELOAD=$(abspath $(OUT)/kvm_interposer.so) $(OUT)/allocfail-asan

clean:
	rm -rf $(OUT) $(EMB)

.PHONY: all install check symbols clean alloc-check kvm-check
