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
 *   they are only ever added to. The library is a static archive, so
 *   there are no linker version nodes: check SEVPEB_VERSION_NUMBER at build
 *   time and sevpeb_version_number() at run time. The archive exports
 *   nothing but sevpeb_* symbols.
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
 *     sevpeb_shared_runs, sevpeb_get_bitmap, sevpeb_digest, ...) may run concurrently with
 *     updates; each returns a consistent snapshot of the pages it covers at
 *     one instant per 64 MiB chunk.
 *   - Layout changes (sevpeb_slot_*) and sevpeb_reset may run concurrently
 *     with updates (QEMU calls them with the BQL held, vCPUs may be running).
 *   - At most one outgoing migration (sevpeb_save_*) and one incoming
 *     (sevpeb_load_*) per tracker at a time; each session's calls must not
 *     overlap each other (QEMU: one migration thread / the incoming
 *     coroutine). They may overlap updates: a page changed while the encoder
 *     runs is sent again by a later iterate or by complete.
 *   - Internally one short mutex guards each operation, except an update
 *     that changes pages inside one 64-bit word of a mixed 64 MiB chunk (or
 *     finds a uniform chunk already in that state): it takes no mutex, only
 *     an atomic read-modify-write of the word and of the chunk's dirty bit,
 *     so such updates from different threads run in parallel. Every locked
 *     operation first waits out the lock-free updates in flight and holds
 *     new ones off until it is done, so each operation still sees the state
 *     at one instant. No callback is called with the mutex held or inside a
 *     lock-free update, so callbacks may call back into the library.
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

/*
 * Errno lists: each function's comment lists every negative errno it can
 * return (a test drives each function through its error paths and checks
 * this). When several errors apply, the first in this order is returned:
 * t == NULL, then the other arguments on their own (NULL pointers, flags,
 * state, npages == 0: -EINVAL; a slot ending beyond SEVPEB_GFN_LIMIT:
 * -ERANGE), then a buffer's size (-ENOSPC), then the arguments against
 * the layout (-ERANGE, -ENOENT, -EEXIST), then resources (-ENOSPC for a
 * full slot table, -ENOMEM). sevpeb_load_state reports the first fault in
 * stream order.
 */

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

/** One slot of a layout for sevpeb_set_layout. */
typedef struct sevpeb_slot {
    uint64_t base_gfn;
    uint64_t npages;
} sevpeb_slot;

/**
 * Set the whole layout to the count slots of slots[] (ascending base_gfn,
 * not overlapping; count 0 removes every slot) in one step: concurrent
 * calls see the old layout or the new one, never one in between (one lock
 * hold). A slot whose base_gfn is in both layouts is resized (surviving
 * pages keep their state); a new base_gfn is added (pages private); an old
 * slot whose base_gfn is not in the new layout is removed, and its shared
 * pages stay shared where the new layout covers them (so a slot merged with
 * a neighbour keeps its shared pages). Each range made shared that way is
 * reported to the change callback (SEVPEB_SHARED) after the call's lock is
 * released; resizes, adds and removals are not reported.
 * Returns 0; -EINVAL (t NULL, slots NULL with count > 0, npages == 0,
 * base_gfn not ascending); -ERANGE (a slot ends beyond SEVPEB_GFN_LIMIT);
 * -EEXIST (two slots overlap); -ENOSPC (count > SEVPEB_MAX_SLOTS): all
 * checked before anything changes; -ENOMEM (nothing changed: the slots
 * that change are built aside and swapped in). Thread-safe.
 */
SEVPEB_API int sevpeb_set_layout(sevpeb_tracker *t, const sevpeb_slot *slots, uint32_t count);

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

/** One run of shared pages: [gfn, gfn + npages). */
typedef struct sevpeb_run {
    uint64_t gfn;
    uint64_t npages;
} sevpeb_run;

/**
 * Batch form of sevpeb_next_shared_run: store up to max consecutive shared
 * runs, the first being the one sevpeb_next_shared_run(t, from_gfn) finds,
 * into runs[0..], in ascending GFN order, all from one snapshot (the
 * tracker is locked once per call, so updates wait for at most max runs'
 * worth of search; pick max accordingly, e.g. 4096). To iterate all runs,
 * start at 0 and continue from runs[n-1].gfn + runs[n-1].npages while the
 * call returns max.
 * Returns the number of runs stored (0..max; < max means no more runs
 * after the last one); -EINVAL (t or runs NULL with max > 0, or max >
 * INT64_MAX). Thread-safe (a query: may run concurrently with updates).
 */
SEVPEB_API int64_t sevpeb_shared_runs(sevpeb_tracker *t, uint64_t from_gfn,
                                      sevpeb_run *runs, size_t max);

/**
 * Copy the range out as bits (the seed's GET, any start GFN): bit i of the
 * output (byte i / 8, bit i % 8, least significant first, i.e. a Linux
 * bitmap on little-endian x86) is the state of gfn + i, 1 = private.
 * Bits of the last byte above npages are left as they were in dst (like the
 * v6 kernel's partial-byte fix). dst_len must be >= (npages + 7) / 8.
 * Returns 0; -EINVAL (dst NULL, npages == 0); -ENOSPC (dst_len too
 * small); -ERANGE. On failure dst is untouched (every check comes before
 * the first byte is written).
 */
SEVPEB_API int sevpeb_get_bitmap(sevpeb_tracker *t, uint64_t gfn, uint64_t npages,
                                 uint8_t *dst, size_t dst_len);

/**
 * Copy bits into the range as exact values (the SET Steve Rutherford asked
 * for: 1 sets private, 0 sets shared, in the layout of sevpeb_get_bitmap).
 * src == NULL makes the whole range private (reported to the change
 * callback as SEVPEB_PRIVATE, not SEVPEB_MIXED). src_len must be
 * >= (npages + 7) / 8 when src is not NULL. The range changes atomically
 * with respect to readers of each 64 MiB chunk.
 * Returns 0; -EINVAL; -ENOSPC (src_len too small); -ERANGE; -ENOMEM.
 */
SEVPEB_API int sevpeb_set_bitmap(sevpeb_tracker *t, uint64_t gfn, uint64_t npages,
                                 const uint8_t *src, size_t src_len);

/**
 * Make every page of the layout private (cold reboot). The layout stays.
 * Reported to the change callback as one call (the slot's whole range,
 * SEVPEB_PRIVATE) per slot that had shared pages; a slot that was already
 * all private gets no call. Returns 0 or -EINVAL.
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

/* --- Comparing two trackers --------------------------------------------- */

/**
 * Compare the page states of trackers a and b over [gfn, gfn + npages):
 * *count receives the number of pages whose state differs, and gfns[] the
 * first min(*count, max_gfns) of their GFNs in ascending order (gfns may be
 * NULL when max_gfns is 0). A VMM keeps a second tracker as the record of
 * the path each page's latest migration copy took (1 = sent as private,
 * 0 = as shared) and compares it with the live tracker at completion: every
 * difference is a misrouted page (docs/QEMU.md, "Routing").
 * The range must lie inside both layouts. Reads each 64 MiB piece of each
 * tracker at one instant (as sevpeb_get_bitmap); pieces that are uniform
 * and equal on both sides cost two page counts. Exact when neither tracker
 * changes during the call. a == b gives 0.
 * Returns the number of GFNs stored (>= 0); -EINVAL (a, b or count NULL,
 * npages 0, gfns NULL with max_gfns > 0); -ERANGE (range outside a's or
 * b's layout; the message names which); -ENOMEM. Thread-safe.
 */
SEVPEB_API int sevpeb_count_differences(sevpeb_tracker *a, sevpeb_tracker *b,
                                        uint64_t gfn, uint64_t npages, uint64_t *count,
                                        uint64_t *gfns, size_t max_gfns);

/* --- Change notification --------------------------------------------------- */

/**
 * Called after every update that changed at least one page, with a range
 * that contains every changed page (it may also contain unchanged ones),
 * and the new state: SEVPEB_PRIVATE, SEVPEB_SHARED, or SEVPEB_MIXED for
 * sevpeb_set_bitmap (re-read the range if the values matter). Not called
 * when an incoming migration commits its state. Called in the updating thread, without internal locks
 * held, before the update call returns: a VMM marks those RAM pages dirty
 * here so that their contents are sent again (closing the races of
 * docs/SOURCES.md section 7.1). Must not call sevpeb_tracker_destroy.
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
 * Write one PART payload with what changed since it was last sent, up to
 * a byte budget of max_bytes (0 = no limit). The budget counts the state
 * records (FILL, BITS, RUNS) only and is checked after each 64 MiB chunk:
 * the payload stops after the first chunk that reaches it, so it can exceed
 * the budget by one chunk record (up to ~2.1 KiB) plus the LAYOUT, CONTROL
 * and END_OF_PAYLOAD records, which come on top (a budget of 20 gave a PART
 * of 2,331 bytes).
 * Returns 1 if nothing is left to send, 0 if more remains, or a negative
 * errno (-EINVAL: t or write NULL; -EPROTO: no active save; the writer's
 * error).
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
 * stopped). Returns 0 or a negative errno (-EINVAL: t or write NULL;
 * -EPROTO: no active save; the writer's error).
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
 * uncommitted staging copy and any earlier failure. Returns 0 or -EINVAL
 * (t NULL).
 */
SEVPEB_API int sevpeb_load_setup(sevpeb_tracker *t);

/**
 * Read and apply one section payload (START, PART or END) to the staging
 * copy, through END_OF_PAYLOAD. version_id is the section version QEMU
 * read (accepted: 1). When the payload ends with FINAL and everything
 * checks, the staging copy replaces the live state (layout must match the
 * tracker's own slots) and 1 is returned; otherwise 0 (more sections
 * expected). On any error nothing of the live state changes and further
 * sections are refused until sevpeb_load_setup (-EBADMSG). A section
 * after the commit (after the payload with FINAL) is refused with
 * -EBADMSG and the committed state stays; a new incoming migration starts
 * with sevpeb_load_setup.
 * Errors: -EINVAL (t or read NULL), -EPROTONOSUPPORT (version),
 * -EBADMSG (bad magic, unknown or misplaced record, reserved bits, a
 * section after a failure or after the commit), -EMSGSIZE (a length over
 * its bound),
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

/* ======================================================================= */
/* KVM                                                                      */
/* ======================================================================= */
/*
 * The library's KVM side, bound to the VMM's VM fd. The VMM owns the fd:
 * sevpeb never closes it, and it must stay open while bound. One binding per
 * tracker. Everything here is optional: a VMM may feed the tracker itself
 * with sevpeb_map_gpa_range and sevpeb_set_migration_control.
 *
 * Dialects (the VMM picks one; sevpeb never probes or guesses):
 *   SEVPEB_KVM_UPSTREAM    merged Linux >= 5.14. The guest's
 *       KVM_HC_MAP_GPA_RANGE exits to the VMM (KVM_EXIT_HYPERCALL), readiness
 *       is MSR_KVM_MIGRATION_CONTROL through an MSR filter, guest_memfd VMs
 *       take KVM_SET_MEMORY_ATTRIBUTES. The kernel keeps no bitmap.
 *   SEVPEB_KVM_SEED_V6     the out-of-tree v6 series (March 2020): the kernel
 *       keeps the bitmap; KVM_GET_PAGE_ENC_BITMAP 0x4018AEC5,
 *       KVM_SET_PAGE_ENC_BITMAP 0x4018AEC6 (only clears bits),
 *       KVM_PAGE_ENC_BITMAP_RESET 0xAEC7.
 *   SEVPEB_KVM_SEED_V7_V9  the out-of-tree v7..v9 series (2020): GET
 *       0x4018AEC6, SET 0x4018AEC7 (exact values in whole 64-bit words; a NULL
 *       bitmap resets).
 * The seed numbers now belong to other upstream ioctls (0xAEC7 is
 * KVM_RESET_DIRTY_RINGS, nr 0xc6 is KVM_X86_SET_MSR_FILTER): sevpeb issues
 * them only on a VM bound with that seed dialect, never on an upstream one.
 * The only request in the 0xAEC5..0xAEC9 block an upstream binding issues is
 * KVM_X86_SET_MSR_FILTER (0x4188AEC6), from sevpeb_kvm_install_msr_filter
 * with flags 0.
 *
 * Upstream sequence (QEMU: kvm_arch_init / vCPU exit loop / migration):
 *   sevpeb_kvm_bind(t, vm_fd, SEVPEB_KVM_UPSTREAM);
 *   sevpeb_kvm_enable_hypercall_exit(t);
 *   sevpeb_kvm_install_msr_filter(t, 0);         (or _BY_VMM + sevpeb_kvm_msr_filter_range)
 *   sevpeb_kvm_cpuid_features(t, &eax);          OR eax into CPUID 0x40000001 EAX
 *   vCPU loop: sevpeb_kvm_handle_hypercall(t, run) / sevpeb_kvm_handle_msr_exit(t, run)
 *   before migrating: sevpeb_kvm_may_migrate(t)
 *   destination, guest_memfd VM: sevpeb_kvm_apply_memory_attributes(t) after the load
 * Seed sequence:
 *   sevpeb_kvm_bind(t, vm_fd, SEVPEB_KVM_SEED_V6 or _V7_V9);
 *   source: sevpeb_kvm_sync_from_kernel(t) before every save_iterate / save_complete;
 *   destination: sevpeb_kvm_push_to_kernel(t) after the load returned 1;
 *   cold reset: sevpeb_reset(t) and sevpeb_kvm_reset_kernel(t).
 *
 * Threading: the exit handlers (sevpeb_kvm_handle_hypercall,
 * sevpeb_kvm_handle_msr_exit) and sevpeb_kvm_msr_filter_range use no KVM
 * state and may run on any number of vCPU threads at once, like
 * sevpeb_map_gpa_range. sevpeb_kvm_cpuid_features and sevpeb_kvm_may_migrate
 * read atomics and may run any time. Every other sevpeb_kvm_* call takes the
 * binding's mutex (calls serialize; they may run while vCPUs run, except
 * where noted). Errors are negative errnos with a sevpeb_last_error() text
 * naming the ioctl and errno; none of these calls aborts the process.
 * Common errnos: -EINVAL (t NULL, bad argument), -EBADF (no VM fd bound, or
 * the fd is not open), -EOPNOTSUPP (the call does not exist in the bound
 * dialect, or the kernel lacks the capability), and any errno the ioctl
 * returned (-ENOTTY: not a KVM VM fd / kernel without the ioctl; -EFAULT;
 * -ENOMEM).
 */

struct kvm_run;              /* <linux/kvm.h>: the vCPU's mmap'ed run struct */
struct kvm_msr_filter_range; /* <linux/kvm.h> */

#define SEVPEB_KVM_UPSTREAM    0u
#define SEVPEB_KVM_SEED_V6     6u
#define SEVPEB_KVM_SEED_V7_V9  7u

/**
 * Bind t to the VMM's VM fd in dialect. Upstream: one
 * KVM_CHECK_EXTENSION(KVM_CAP_EXIT_HYPERCALL) checks the fd is a KVM fd.
 * Seed dialects: no ioctl (they have nothing to probe).
 * Returns 0; -EBADF (vm_fd < 0 or closed); -ENOTTY (not a KVM fd); -EBUSY
 * (already bound; sevpeb_kvm_unbind first); -EINVAL (t NULL, unknown dialect).
 */
SEVPEB_API int sevpeb_kvm_bind(sevpeb_tracker *t, int vm_fd, uint32_t dialect);

/**
 * Forget the VM fd (not closed) and what was set up on it (KVM keeps it).
 * Returns 0 or -EINVAL.
 */
SEVPEB_API int sevpeb_kvm_unbind(sevpeb_tracker *t);

/* --- Upstream: KVM_HC_MAP_GPA_RANGE exits ------------------------------- */

/** KVM_CAP_EXIT_HYPERCALL and the bit for KVM_HC_MAP_GPA_RANGE (docs/SOURCES.md section 3.2). */
#define SEVPEB_KVM_CAP_EXIT_HYPERCALL   201u
#define SEVPEB_KVM_EXIT_HYPERCALL_MASK  (1ull << SEVPEB_KVM_HC_MAP_GPA_RANGE)

/**
 * Make the guest's KVM_HC_MAP_GPA_RANGE exit to the VMM: checks that
 * KVM_CHECK_EXTENSION(KVM_CAP_EXIT_HYPERCALL) reports bit 12, then
 * KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL, 1 << 12) (a subset of the reported
 * mask, as api.rst 8.33 requires). Idempotent. Overwrites the VM's
 * hypercall-exit mask (today bit 12 is the only valid bit).
 * Returns 0; -EOPNOTSUPP (the kernel's mask lacks bit 12: Linux < 5.14; or a
 * seed dialect); -EBADF; -EINVAL; or the ioctl's errno.
 */
SEVPEB_API int sevpeb_kvm_enable_hypercall_exit(sevpeb_tracker *t);

/**
 * Handle a KVM_EXIT_HYPERCALL from run (the vCPU's struct kvm_run).
 * For nr == KVM_HC_MAP_GPA_RANGE (12) the arguments are decoded strictly as
 * sevpeb_map_gpa_range does, the tracker updated, and run->hypercall.ret is
 * ALWAYS written: 0, or -KVM_EINVAL (-22) with nothing changed (the reason in
 * sevpeb_last_error()). Other exit reasons and hypercall numbers are left to
 * the VMM and run is not touched.
 * The VMM must KVM_RUN the vCPU again before saving its state ("KVM_EXIT_
 * HYPERCALL requires userspace to do KVM_RUN before state save/restore, so
 * that KVM can skip the hypercall instruction", kernel documentation,
 * January 2025); otherwise the restored guest repeats the hypercall.
 * Returns 1 (handled, ret written), 0 (not ours), -EINVAL (t or run NULL).
 * Thread-safe (vCPU threads); no KVM ioctl; bound or not.
 */
SEVPEB_API int sevpeb_kvm_handle_hypercall(sevpeb_tracker *t, struct kvm_run *run);

/* --- Upstream: MSR_KVM_MIGRATION_CONTROL --------------------------------- */

/** Flag for sevpeb_kvm_install_msr_filter: the VMM keeps its own filter. */
#define SEVPEB_KVM_MSR_FILTER_BY_VMM 1u

/**
 * Route guest RDMSR/WRMSR of MSR_KVM_MIGRATION_CONTROL (0x4b564d08) to the
 * VMM. flags 0: KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR,
 * KVM_MSR_EXIT_REASON_FILTER) then KVM_X86_SET_MSR_FILTER with a default-allow
 * filter of one range that denies only this MSR. This REPLACES any MSR filter
 * and user-space-MSR mask the VM had: a VMM with its own filter passes
 * SEVPEB_KVM_MSR_FILTER_BY_VMM instead, adds sevpeb_kvm_msr_filter_range() to
 * its filter (and enables KVM_MSR_EXIT_REASON_FILTER itself); no ioctl is
 * issued then, the call only records that exits will arrive.
 * Returns 0; -EOPNOTSUPP (kernel without KVM_CAP_X86_USER_SPACE_MSR or
 * KVM_CAP_X86_MSR_FILTER, Linux < 5.10; or a seed dialect); -EBADF;
 * -EINVAL (flags); or the ioctl's errno.
 */
SEVPEB_API int sevpeb_kvm_install_msr_filter(sevpeb_tracker *t, uint32_t flags);

/**
 * Fill *range for a VMM-owned MSR filter: flags KVM_MSR_FILTER_READ |
 * KVM_MSR_FILTER_WRITE, nmsrs 1, base MSR_KVM_MIGRATION_CONTROL, bitmap =
 * bitmap with *bitmap = 0 (denied, so the access exits with
 * KVM_MSR_EXIT_REASON_FILTER). *bitmap must stay valid until the VMM's
 * KVM_X86_SET_MSR_FILTER call returns.
 * Returns 0 or -EINVAL (a NULL pointer). Thread-safe; no ioctl.
 */
SEVPEB_API int sevpeb_kvm_msr_filter_range(struct kvm_msr_filter_range *range, uint8_t *bitmap);

/**
 * Handle a KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR for
 * MSR_KVM_MIGRATION_CONTROL: RDMSR sets run->msr.data to the recorded value;
 * WRMSR records run->msr.data (as sevpeb_set_migration_control). run->msr.error
 * is set to 0, or 1 (KVM injects #GP) for a WRMSR with reserved bits, which
 * changes nothing. Other exits and MSR indexes are left to the VMM, run
 * untouched. The value is one per VM and travels in the migration stream.
 * Returns 1 (handled), 0 (not ours), -EINVAL (t or run NULL).
 * Thread-safe (vCPU threads); no KVM ioctl; bound or not.
 */
SEVPEB_API int sevpeb_kvm_handle_msr_exit(sevpeb_tracker *t, struct kvm_run *run);

/** CPUID leaf and EAX bits (arch/x86/include/uapi/asm/kvm_para.h). */
#define SEVPEB_KVM_CPUID_FEATURES            0x40000001u
#define SEVPEB_KVM_FEATURE_HC_MAP_GPA_RANGE  16
#define SEVPEB_KVM_FEATURE_MIGRATION_CONTROL 17

/**
 * The CPUID 0x40000001 EAX bits the VMM may advertise now, into *eax:
 * 1 << KVM_FEATURE_HC_MAP_GPA_RANGE once sevpeb_kvm_enable_hypercall_exit
 * succeeded ("Userspace must enable that capability before advertising
 * KVM_FEATURE_HC_MAP_GPA_RANGE", hypercalls.rst); in addition
 * 1 << KVM_FEATURE_MIGRATION_CONTROL once the MSR exits are routed
 * (sevpeb_kvm_install_msr_filter). A Linux guest that sees
 * MIGRATION_CONTROL starts issuing MAP_GPA_RANGE, so it is never offered
 * without the exit. 0 when unbound or bound to a seed dialect (those kernels
 * set their own bits; v9/v10 used bit 16 for their own feature).
 * Returns 0 or -EINVAL. Thread-safe.
 */
SEVPEB_API int sevpeb_kvm_cpuid_features(sevpeb_tracker *t, uint32_t *eax);

/**
 * May an outgoing migration start now, as far as KVM is concerned? Upstream:
 * the hypercall exit is enabled, the MSR exits are routed, and the guest has
 * set KVM_MIGRATION_READY; then sevpeb_may_migrate's own check. Seed
 * dialects: the kernel keeps the bitmap, so only sevpeb_may_migrate's check.
 * Returns 1 (yes), 0 (no; the reason is this thread's sevpeb_last_error(),
 * e.g. "guest has not declared itself migration-ready ..."), -EINVAL.
 * Thread-safe.
 */
SEVPEB_API int sevpeb_kvm_may_migrate(sevpeb_tracker *t);

/* --- Upstream: guest_memfd VMs ------------------------------------------ */

/**
 * Apply the tracker's state to the VM's memory attributes (destination, after
 * the load returned 1, vCPUs stopped): KVM_CHECK_EXTENSION(
 * KVM_CAP_MEMORY_ATTRIBUTES) must report KVM_MEMORY_ATTRIBUTE_PRIVATE, then
 * one KVM_SET_MEMORY_ATTRIBUTES per maximal run within each stretch of
 * touching slots (private runs PRIVATE, shared runs 0; a stretch without
 * shared pages is one ioctl). GFNs outside the slots are left alone.
 * Returns the number of ioctls issued (>= 0); -EOPNOTSUPP (no PRIVATE
 * attribute: not a guest_memfd VM type or Linux < 6.8; or a seed dialect);
 * -EBADF; -EINVAL; or the ioctl's errno (runs before it were applied).
 */
SEVPEB_API int sevpeb_kvm_apply_memory_attributes(sevpeb_tracker *t);

/* --- Seed dialects: the kernel's bitmap ---------------------------------- */
/*
 * Steve Rutherford's API (2020-04-10) on either seed dialect: GET of any
 * range, one "set exact / reset" call, the kernel's size, and the opt-in
 * (sevpeb_kvm_bind). sevpeb hides each dialect's quirks: v6 SET can only
 * clear bits and is only right from GFN 0, so sevpeb composes the bitmap
 * from a GET and SETs from GFN 0, RESETting first when a bit must become
 * private; v7..v9 SET writes whole 64-bit words at start_gfn & ~63, so sevpeb
 * widens to 64-aligned words after GETting the edge words, leaving the
 * neighbours as they were. GETs and v7..v9 SETs go in pieces of 2^21 pages.
 * Writes read-modify-write the kernel's bitmap: call them with the vCPUs
 * stopped. On an upstream binding the sync calls below return 0 and do
 * nothing; the kernel_* calls return -EOPNOTSUPP.
 */

/**
 * Copy [gfn, gfn + npages) of the KERNEL's bitmap into dst (layout of
 * sevpeb_get_bitmap: bit i = gfn + i, 1 = private; pages beyond the kernel's
 * bitmap read 1; bits of the last byte above npages kept). Any gfn.
 * Returns 0; -EINVAL (dst NULL, npages 0); -ENOSPC (dst_len <
 * (npages + 7) / 8); -ERANGE (beyond SEVPEB_GFN_LIMIT); -EOPNOTSUPP; -EBADF;
 * or the ioctl's errno. Safe while vCPUs run.
 */
SEVPEB_API int sevpeb_kvm_kernel_get_bitmap(sevpeb_tracker *t, uint64_t gfn, uint64_t npages,
                                            uint8_t *dst, size_t dst_len);

/**
 * Set [gfn, gfn + npages) of the KERNEL's bitmap to exactly src (layout of
 * sevpeb_set_bitmap); src NULL makes the range private. Kernel bits outside
 * the range keep their values (v6: up to max(layout end, gfn + npages, what
 * sevpeb wrote before); v6 has no size query, so shared marks the guest made
 * above that are lost when a RESET is needed). The tracker is not changed.
 * Returns 0; -EINVAL; -ENOSPC (src_len); -ERANGE; -ENOMEM; -EOPNOTSUPP;
 * -EBADF; or the ioctl's errno. vCPUs stopped.
 */
SEVPEB_API int sevpeb_kvm_kernel_set_bitmap(sevpeb_tracker *t, uint64_t gfn, uint64_t npages,
                                            const uint8_t *src, size_t src_len);

/**
 * The kernel bitmap's size in pages into *npages: v7..v9 size it to the
 * highest memslot end at KVM_SET_USER_MEMORY_REGION, reported here as the
 * tracker layout's end (mirror the memslots in the layout); v6 grows it
 * lazily with every hypercall and SET, so this is what sevpeb itself has
 * made it cover (0 before the first push / set).
 * Returns 0; -EOPNOTSUPP (upstream); -EBADF; -EINVAL.
 */
SEVPEB_API int sevpeb_kvm_kernel_bitmap_size(sevpeb_tracker *t, uint64_t *npages);

/**
 * Source sync point: pull the kernel's bits for every slot of the layout
 * into the tracker (GET per slot stretch, then the same update as
 * sevpeb_set_bitmap, so the change callback sees what changed). Call before
 * each sevpeb_save_setup / save_iterate and before save_complete.
 * Returns 1 (tracker changed), 0 (unchanged, or upstream), or a negative
 * errno. Safe while vCPUs run.
 */
SEVPEB_API int sevpeb_kvm_sync_from_kernel(sevpeb_tracker *t);

/**
 * Destination sync point: make the kernel's bitmap equal the tracker for
 * every slot (after sevpeb_load_state returned 1). Upstream: returns 0 and
 * does nothing (guest_memfd: sevpeb_kvm_apply_memory_attributes).
 * Returns 0 or a negative errno. vCPUs stopped.
 */
SEVPEB_API int sevpeb_kvm_push_to_kernel(sevpeb_tracker *t);

/**
 * Reboot sync point: make the whole kernel bitmap private (v6
 * KVM_PAGE_ENC_BITMAP_RESET; v7..v9 SET with a NULL bitmap). Upstream:
 * returns 0 and does nothing. The tracker is not changed: call sevpeb_reset
 * too. v6: 0xAEC7 is also upstream KVM_RESET_DIRTY_RINGS, so the reset is
 * issued only after KVM_CHECK_EXTENSION reports 0 for both
 * KVM_CAP_DIRTY_LOG_RING (192) and KVM_CAP_DIRTY_LOG_RING_ACQ_REL (223), as
 * on the v6 kernel (5.6); otherwise -EOPNOTSUPP and nothing is issued.
 * Returns 0, -EOPNOTSUPP, or a negative errno (of the ioctl).
 */
SEVPEB_API int sevpeb_kvm_reset_kernel(sevpeb_tracker *t);

#ifdef __cplusplus
}
#endif

#endif /* SEVPEB_H */
