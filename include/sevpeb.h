/*
 * sevpeb.h - page-encryption bitmap of a confidential guest, and its live
 * migration section.
 *
 * sevpeb keeps, for every 4 KiB guest frame (GFN) of the VMM's memory
 * slots, one bit: 1 = private (encrypted, the default), 0 = shared
 * (plaintext). The guest reports changes with KVM_HC_MAP_GPA_RANGE; the VMM
 * feeds those exits, its memslot layout and cold resets to this library, and
 * carries the state to the destination as its own migration section
 * (QEMU idstr "sev-page-enc-bitmap"). The stream format is docs/FORMAT.md.
 *
 * ---------------------------------------------------------------------------
 * Stability
 *   Functions and types in this header are stable within a major version:
 *   they are only ever added to (one linker version node per release,
 *   SEVPEB_0.1, ...). The archive exports nothing but sevpeb_* symbols.
 *
 * Errors
 *   Every function that can fail returns a negative errno value (-EINVAL,
 *   -ERANGE, ...) and never aborts the process, whatever its arguments or
 *   input stream. Each function lists the errnos it returns. For a failure
 *   the calling thread can fetch a one-line message naming the field and the
 *   value with sevpeb_last_error(); sevpeb_strerror() names the class.
 *
 * Threading contract
 *   - Page-state updates (sevpeb_set_range, sevpeb_set_bitmap,
 *     sevpeb_map_gpa_range) may be called from any number of threads at once
 *     (vCPU threads, without the VMM's big lock). Each is atomic: readers and
 *     the encoder see a range either before or after an update, never torn,
 *     and no update is lost.
 *   - Queries (sevpeb_test, sevpeb_count_shared, sevpeb_next_shared_run,
 *     sevpeb_get_bitmap, sevpeb_digest, ...) may run concurrently with
 *     updates; each returns a consistent snapshot of the pages it covers at
 *     one instant per 64 MiB chunk.
 *   - Layout changes (sevpeb_slot_*) and sevpeb_reset may run concurrently
 *     with updates (QEMU calls them with the BQL held, vCPUs may be running).
 *   - At most one outgoing migration (sevpeb_save_*) and one incoming
 *     (sevpeb_load_*) per tracker at a time; each session's calls must not
 *     overlap each other (QEMU: one migration thread / the incoming
 *     coroutine). They may overlap updates: a page changed while the encoder
 *     runs is sent again by a later iterate or by complete.
 *   - Internally one short mutex guards each operation; no callback is
 *     called with it held, so callbacks may call back into the library.
 *   - sevpeb_tracker_destroy must not race with any other call on the same
 *     tracker.
 *   - Hot paths (single-range updates, completion with nothing changed)
 *     allocate nothing, except the first time a uniform 64 MiB chunk becomes
 *     mixed (one 2 KiB block).
 *
 * Input is untrusted
 *   Hypercall arguments come from the guest and migration streams from the
 *   network. Both are validated before use; a stream is loaded into a
 *   staging copy and committed only after its digest matched, so a failed
 *   load leaves the destination's state unchanged.
 */
#ifndef SEVPEB_H
#define SEVPEB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) && __GNUC__ >= 4
#define SEVPEB_API __attribute__((visibility("default")))
#else
#define SEVPEB_API
#endif

/* ======================================================================= */
/* Version                                                                  */
/* ======================================================================= */

#define SEVPEB_VERSION_MAJOR 0
#define SEVPEB_VERSION_MINOR 1
#define SEVPEB_VERSION_PATCH 0
#define SEVPEB_VERSION_NUMBER \
    (SEVPEB_VERSION_MAJOR * 10000 + SEVPEB_VERSION_MINOR * 100 + SEVPEB_VERSION_PATCH)

/** Version of the linked library, as SEVPEB_VERSION_NUMBER. */
SEVPEB_API unsigned sevpeb_version_number(void);
/** Version of the linked library, "MAJOR.MINOR.PATCH" (static string). */
SEVPEB_API const char *sevpeb_version_string(void);

/* ======================================================================= */
/* Errors                                                                   */
/* ======================================================================= */

/**
 * Name of an error class: for a negative errno returned by this library, a
 * static string such as "GFN range outside the memory layout". Never NULL;
 * unknown values give "unknown error".
 */
SEVPEB_API const char *sevpeb_strerror(int err);

/**
 * Detail of the calling thread's last failed sevpeb_* call: one phrase with
 * no trailing newline naming the field, the value read and the value
 * expected, e.g. "FILL at offset 30: gfn range 0xc8..0xcd outside the
 * memory layout (gfn 0xc8 is in no slot)". "" if that thread has had no
 * failure. The string is thread-local; it stays until that thread's next
 * failing call replaces it (successful calls leave it alone).
 */
SEVPEB_API const char *sevpeb_last_error(void);

/* ======================================================================= */
/* Tracker                                                                  */
/* ======================================================================= */

/** Page state values. */
#define SEVPEB_SHARED  0
#define SEVPEB_PRIVATE 1
/** Change-callback state for a sevpeb_set_bitmap range (mixed values). */
#define SEVPEB_MIXED   (-1)

/** Page size tracked: one bit per 4 KiB guest frame. */
#define SEVPEB_PAGE_SHIFT 12

/** Largest number of memory slots in a layout (as KVM's memslot limit). */
#define SEVPEB_MAX_SLOTS 32768u
/** GFNs are 64-bit; a slot must end at or below this GFN (2^52 pages). */
#define SEVPEB_GFN_LIMIT (1ull << 52)

typedef struct sevpeb_tracker sevpeb_tracker;

/**
 * Create an empty tracker (no slots) in *out. flags must be 0.
 * Returns 0, -EINVAL (flags, out == NULL) or -ENOMEM.
 * Thread-safe.
 */
SEVPEB_API int sevpeb_tracker_create(uint32_t flags, sevpeb_tracker **out);

/** Free a tracker. NULL is ignored. Must not race with other calls on t. */
SEVPEB_API void sevpeb_tracker_destroy(sevpeb_tracker *t);

/* --- Layout: the VMM's memory slots ------------------------------------- */

/**
 * Add a slot [base_gfn, base_gfn + npages). Its pages start private.
 * Returns 0; -EINVAL (npages == 0, t == NULL); -ERANGE (end beyond
 * SEVPEB_GFN_LIMIT or overflow); -EEXIST (overlaps an existing slot);
 * -ENOSPC (SEVPEB_MAX_SLOTS reached); -ENOMEM.
 */
SEVPEB_API int sevpeb_slot_add(sevpeb_tracker *t, uint64_t base_gfn, uint64_t npages);

/**
 * Remove the slot that starts at base_gfn, and its state.
 * Returns 0; -ENOENT (no slot starts there); -EINVAL (t == NULL).
 */
SEVPEB_API int sevpeb_slot_remove(sevpeb_tracker *t, uint64_t base_gfn);

/**
 * Grow or shrink the slot that starts at base_gfn to npages. Surviving
 * pages keep their state; new pages start private.
 * Returns 0; -ENOENT; -EINVAL (npages == 0); -ERANGE; -EEXIST (growing
 * into the next slot); -ENOMEM (state unchanged).
 */
SEVPEB_API int sevpeb_slot_resize(sevpeb_tracker *t, uint64_t base_gfn, uint64_t npages);

/** Number of slots (>= 0), or -EINVAL. */
SEVPEB_API int sevpeb_slot_count(sevpeb_tracker *t);

/**
 * Slot number index (0-based, ascending GFN order) into *base_gfn, *npages.
 * Returns 0, -ENOENT (index >= count) or -EINVAL.
 */
SEVPEB_API int sevpeb_slot_get(sevpeb_tracker *t, uint32_t index,
                               uint64_t *base_gfn, uint64_t *npages);

/* --- Page state ---------------------------------------------------------- */
/*
 * A range [gfn, gfn + npages) must lie inside the layout: inside one slot or
 * across slots that touch (no holes). Otherwise the call fails with -ERANGE
 * and changes nothing. npages == 0 is -EINVAL.
 */

/**
 * Set every page of the range private (state = SEVPEB_PRIVATE) or shared
 * (SEVPEB_SHARED). Returns 0; -EINVAL (state not 0/1, npages == 0);
 * -ERANGE; -ENOMEM (nothing changed). Thread-safe.
 */
SEVPEB_API int sevpeb_set_range(sevpeb_tracker *t, uint64_t gfn, uint64_t npages, int state);

/** State of one page: SEVPEB_PRIVATE (1), SEVPEB_SHARED (0), or -ERANGE / -EINVAL. */
SEVPEB_API int sevpeb_test(sevpeb_tracker *t, uint64_t gfn);

/** Number of shared pages in the range (>= 0), or -EINVAL / -ERANGE. */
SEVPEB_API int64_t sevpeb_count_shared(sevpeb_tracker *t, uint64_t gfn, uint64_t npages);

/** Number of pages in the layout, and how many of them are shared. Returns 0 or -EINVAL. */
SEVPEB_API int sevpeb_totals(sevpeb_tracker *t, uint64_t *pages, uint64_t *shared);

/**
 * Find the first maximal run of shared pages that ends after from_gfn, in
 * ascending GFN order; runs continue across slots that touch. The run is
 * clipped to start at from_gfn or later. To iterate all runs, start at 0
 * and continue from *gfn + *npages.
 * Returns 1 (run stored), 0 (no more runs) or -EINVAL.
 */
SEVPEB_API int sevpeb_next_shared_run(sevpeb_tracker *t, uint64_t from_gfn,
                                      uint64_t *gfn, uint64_t *npages);

/**
 * Copy the range out as bits (the seed's GET, any start GFN): bit i of the
 * output (byte i / 8, bit i % 8, least significant first, i.e. a Linux
 * bitmap on little-endian x86) is the state of gfn + i, 1 = private.
 * Bits of the last byte above npages are left as they were in dst (like the
 * v6 kernel's partial-byte fix). dst_len must be >= (npages + 7) / 8.
 * Returns 0; -EINVAL (dst NULL, npages == 0); -ENOSPC (dst_len too
 * small); -ERANGE.
 */
SEVPEB_API int sevpeb_get_bitmap(sevpeb_tracker *t, uint64_t gfn, uint64_t npages,
                                 uint8_t *dst, size_t dst_len);

/**
 * Copy bits into the range as exact values (the SET Steve Rutherford asked
 * for: 1 sets private, 0 sets shared, in the layout of sevpeb_get_bitmap).
 * src == NULL makes the whole range private. src_len must be
 * >= (npages + 7) / 8 when src is not NULL. The range changes atomically
 * with respect to readers of each 64 MiB chunk.
 * Returns 0; -EINVAL; -ENOSPC (src_len too small); -ERANGE; -ENOMEM.
 */
SEVPEB_API int sevpeb_set_bitmap(sevpeb_tracker *t, uint64_t gfn, uint64_t npages,
                                 const uint8_t *src, size_t src_len);

/**
 * Make every page of the layout private (cold reboot). The layout stays.
 * Reported to the change callback as one call per slot. Returns 0 or -EINVAL.
 */
SEVPEB_API int sevpeb_reset(sevpeb_tracker *t);

/**
 * Integrity digest of the whole state (layout and bits) as defined in
 * docs/FORMAT.md ("Digest"); the value the migration stream's FINAL record
 * carries. Cached per 4 GiB group, so repeated calls cost O(groups changed).
 * Returns 0 or -EINVAL.
 */
SEVPEB_API int sevpeb_digest(sevpeb_tracker *t, uint64_t *digest);

/** Bytes of memory the tracker holds (its own structures and bitmaps). */
SEVPEB_API uint64_t sevpeb_memory_bytes(sevpeb_tracker *t);

/* --- Change notification --------------------------------------------------- */

/**
 * Called after every update that changed at least one page, with a range
 * that contains every changed page (it may also contain unchanged ones),
 * and the new state: SEVPEB_PRIVATE, SEVPEB_SHARED, or SEVPEB_MIXED for
 * sevpeb_set_bitmap (re-read the range if the values matter). Not called
 * when an incoming migration commits its state. Called in the updating thread, without internal locks
 * held, before the update call returns: a VMM marks those RAM pages dirty
 * here so that their contents are sent again (closing the races of
 * domain.md section 7.1). Must not call sevpeb_tracker_destroy.
 */
typedef void (*sevpeb_change_fn)(void *opaque, uint64_t gfn, uint64_t npages, int state);

/** Install (fn != NULL) or remove (fn == NULL) the change callback. Returns 0 or -EINVAL. */
SEVPEB_API int sevpeb_set_change_callback(sevpeb_tracker *t, sevpeb_change_fn fn, void *opaque);

/* ======================================================================= */
/* Upstream hypercall: KVM_HC_MAP_GPA_RANGE                                 */
/* ======================================================================= */

#define SEVPEB_KVM_HC_MAP_GPA_RANGE       12
#define SEVPEB_MAP_GPA_RANGE_PAGE_SZ_MASK 0xfull     /* bits 3:0: 0 = 4K, 1 = 2M, 2 = 1G */
#define SEVPEB_MAP_GPA_RANGE_ENCRYPTED    (1ull << 4)
#define SEVPEB_MAP_GPA_RANGE_RESERVED     (~0x1full) /* bits 63:5 must be zero */
#define SEVPEB_KVM_EINVAL                 22          /* KVM_EINVAL (include/uapi/linux/kvm_para.h) */

/**
 * Apply one KVM_HC_MAP_GPA_RANGE(gpa, npages, attrs) from the guest:
 * a0 = gpa (4 KiB aligned), a1 = npages (> 0, 4 KiB units, no overflow),
 * a2 = attrs (bits 3:0 page size hint 0/1/2, other values rejected; a
 * 4 KiB-aligned range is accepted whatever the hint; bit 4 = encrypted;
 * bits 63:5 zero). The range must lie inside guest RAM (the layout).
 * Returns the value the VMM writes to run->hypercall.ret: 0 on success, or
 * -SEVPEB_KVM_EINVAL (nothing changed; sevpeb_last_error() says why).
 * Thread-safe, no allocation once the chunk is mixed; ~tens of ns.
 */
SEVPEB_API int64_t sevpeb_map_gpa_range(sevpeb_tracker *t, uint64_t gpa, uint64_t npages,
                                        uint64_t attrs);

/* ======================================================================= */
/* Guest migration readiness: MSR_KVM_MIGRATION_CONTROL                     */
/* ======================================================================= */

#define SEVPEB_MSR_KVM_MIGRATION_CONTROL 0x4b564d08u
#define SEVPEB_KVM_MIGRATION_READY       (1ull << 0)

/**
 * Record the guest's MSR_KVM_MIGRATION_CONTROL value (what it last wrote).
 * Bits other than KVM_MIGRATION_READY are reserved: -EINVAL (the VMM then
 * injects #GP). Returns 0 or -EINVAL. Migrated with the state.
 */
SEVPEB_API int sevpeb_set_migration_control(sevpeb_tracker *t, uint64_t value);

/** The recorded MSR_KVM_MIGRATION_CONTROL value (0 after create). */
SEVPEB_API uint64_t sevpeb_get_migration_control(sevpeb_tracker *t);

/**
 * Require the guest to have declared itself ready (bit 0 set) before an
 * outgoing migration may start (sevpeb_save_setup fails with -EAGAIN
 * otherwise). Off after create. Returns 0 or -EINVAL.
 */
SEVPEB_API int sevpeb_set_require_ready(sevpeb_tracker *t, int require);

/**
 * May an outgoing migration start now? Returns 1 (yes), 0 (no: the reason
 * is stored as sevpeb_last_error() of this thread) or -EINVAL.
 */
SEVPEB_API int sevpeb_may_migrate(sevpeb_tracker *t);

/* ======================================================================= */
/* Migration: save (source) and load (destination)                          */
/* ======================================================================= */
/*
 * Shaped after QEMU's SaveVMHandlers. Each save call writes one whole,
 * self-delimiting payload (it ends with the END_OF_PAYLOAD record) for one
 * START / PART / END section; each sevpeb_load_state call reads exactly one.
 * The stream format, limits and test vectors are in docs/FORMAT.md.
 *
 * Source: setup (layout + full state), iterate* (what changed since it was
 * last sent, up to a byte budget), complete (VM stopped: the rest plus the
 * FINAL record with the digest). Saving never changes the page state; a
 * failed or cancelled migration leaves the source as it was, and a new
 * setup starts over.
 *
 * Destination: load_setup, load_state per section (into a staging copy),
 * committed to the live state only when the FINAL record's digest and
 * layout check; load_cleanup discards an uncommitted staging copy.
 */

/**
 * Write len bytes. Returns 0, or a negative errno that aborts the save
 * call (which then returns it). QEMU: qemu_put_buffer, then
 * qemu_file_get_error.
 */
typedef int (*sevpeb_write_fn)(void *opaque, const uint8_t *buf, size_t len);

/**
 * Read exactly len bytes into buf. Returns 0, or a negative errno if fewer
 * were available (end of stream: -ENODATA) or on error. QEMU:
 * qemu_get_buffer, then compare with len.
 */
typedef int (*sevpeb_read_fn)(void *opaque, uint8_t *buf, size_t len);

/**
 * Begin an outgoing migration and write the START payload (header, layout,
 * migration-control value and the full state; compact: a typical 1 TiB
 * guest costs well under 4 KiB). Marks everything sent.
 * Returns 0; -EBUSY (a save is already active); -EAGAIN (readiness
 * required and the guest is not ready); -EINVAL; or the writer's error.
 */
SEVPEB_API int sevpeb_save_setup(sevpeb_tracker *t, sevpeb_write_fn write, void *opaque);

/**
 * Write one PART payload with what changed since it was last sent, at most
 * about max_bytes (one chunk record may exceed it; 0 = no limit).
 * Returns 1 if nothing is left to send, 0 if more remains, or a negative
 * errno (-EPROTO: no active save; the writer's error).
 */
SEVPEB_API int sevpeb_save_iterate(sevpeb_tracker *t, sevpeb_write_fn write, void *opaque,
                                   uint64_t max_bytes);

/**
 * Estimate of the bytes still to send (changed since last sent), cheap and
 * lock-free enough for QEMU's state_pending_estimate. 0 if no save is active.
 */
SEVPEB_API uint64_t sevpeb_save_pending(sevpeb_tracker *t);

/**
 * Write the END payload: everything still unsent, then FINAL (digest of
 * the whole state, page counts). With nothing changed since the last
 * iterate this adds at most 64 bytes. Call with updates stopped (VM
 * stopped). Returns 0 or a negative errno (-EPROTO: no active save).
 */
SEVPEB_API int sevpeb_save_complete(sevpeb_tracker *t, sevpeb_write_fn write, void *opaque);

/** End the outgoing migration (success or not). Safe to call when none is active. */
SEVPEB_API void sevpeb_save_cleanup(sevpeb_tracker *t);

/** Figures of the current or last outgoing migration. */
typedef struct sevpeb_save_stats {
    uint32_t size;              /* caller sets sizeof(struct sevpeb_save_stats) */
    uint32_t iterations;        /* sevpeb_save_iterate calls */
    uint64_t setup_bytes;       /* START payload bytes */
    uint64_t iterate_bytes;     /* all PART payload bytes */
    uint64_t last_iterate_bytes;
    uint64_t complete_bytes;    /* END payload bytes (downtime) */
    uint64_t records;           /* records written in total */
    uint64_t reserved[4];       /* zero */
} sevpeb_save_stats;

/** Fill *st (st->size must be set). Returns 0 or -EINVAL. */
SEVPEB_API int sevpeb_save_get_stats(sevpeb_tracker *t, sevpeb_save_stats *st);

/**
 * Begin an incoming migration: allocate nothing yet, forget any previous
 * uncommitted staging copy. Returns 0, -EBUSY or -EINVAL.
 */
SEVPEB_API int sevpeb_load_setup(sevpeb_tracker *t);

/**
 * Read and apply one section payload (START, PART or END) to the staging
 * copy, through END_OF_PAYLOAD. version_id is the section version QEMU
 * read (accepted: 1). When the payload ends with FINAL and everything
 * checks, the staging copy replaces the live state (layout must match the
 * tracker's own slots) and 1 is returned; otherwise 0 (more sections
 * expected). On any error nothing of the live state changes and further
 * sections are refused until sevpeb_load_setup.
 * Errors: -EPROTONOSUPPORT (version), -EBADMSG (bad magic, unknown or
 * misplaced record, reserved bits), -EMSGSIZE (a length over its bound),
 * -ERANGE (GFN range outside the declared layout), -EREMCHG (declared
 * layout differs from this tracker's), -EILSEQ (digest or count mismatch),
 * -ENODATA (stream truncated), -ENOMEM, or the reader's error.
 */
SEVPEB_API int sevpeb_load_state(sevpeb_tracker *t, sevpeb_read_fn read, void *opaque,
                                 uint32_t version_id);

/** End the incoming migration; discards an uncommitted staging copy. */
SEVPEB_API void sevpeb_load_cleanup(sevpeb_tracker *t);

/** Section version this library writes (QEMU register_savevm_live version_id). */
#define SEVPEB_SECTION_VERSION 1

#ifdef __cplusplus
}
#endif

#endif /* SEVPEB_H */
