// SPDX-License-Identifier: GPL-2.0
/*
 * sevpeb trial guest agent: behaves like a Linux SEV guest and its firmware
 * towards KVM_HC_MAP_GPA_RANGE / MSR_KVM_MIGRATION_CONTROL (emulated by the
 * patched QEMU under TCG, qemu-patches 0014), and keeps its own record of
 * every page it declared shared, the ground truth the harness compares with
 * the host's tracker.
 *
 * debugfs sevpeb/: "record" (shared runs "gfn npages" as the guest declared
 * them), "stats", "bad" (results of the last malformed-call round), "ctl"
 * (write: pause, resume, verify, bad, offline, reboot, ready,
 * "mark <pfn> <npages> <step>" for memory the guest onlined itself).
 */
#include <linux/module.h>
#include <linux/kthread.h>
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/random.h>
#include <linux/crc32.h>
#include <linux/memblock.h>
#include <linux/kvm_para.h>
#include <linux/delay.h>
#include <asm/msr.h>

#define MAP_ENC (1UL << 4)	/* KVM_MAP_GPA_RANGE_ENCRYPTED */
#define CHURN_PAGES 64		/* pages each churn thread owns */

static unsigned long storm_calls = 19500;
module_param(storm_calls, ulong, 0444);
static unsigned long max_gfn = 1UL << 21;	/* record covers 8 GiB */
module_param(max_gfn, ulong, 0444);
static unsigned long bounce_mb;	/* 0: 6 % of RAM clamped to [64 MiB, 1 GiB], scaled */
module_param(bounce_mb, ulong, 0444);

static unsigned long *shared_bm;	/* the guest's record, 1 bit per pfn */
static unsigned long bm_pfns;
static atomic64_t calls, errors, verified, crc_fail, bad_ok, bad_fail;
static atomic_t paused, busy;
static char badlog[1024];
static size_t badlen;
static struct task_struct *threads[NR_CPUS];
static struct dentry *dir;

struct churn_page { struct page *pg; u32 crc; bool written; };
static struct churn_page (*owned)[CHURN_PAGES];

static long map(unsigned long pfn, unsigned long n, bool enc)
{
	unsigned long i;
	long ret;

	/*
	 * No lock around the call: the vCPUs' calls run concurrently, as in a
	 * real guest.  Each page has one owner (a churn thread, or init), so
	 * the owner's atomic bit updates keep the record exact; the harness
	 * reads it with churn paused.
	 */
	ret = kvm_hypercall3(KVM_HC_MAP_GPA_RANGE, pfn << PAGE_SHIFT, n,
			     enc ? MAP_ENC : 0);
	if (!ret)
		for (i = pfn; i < pfn + n && i < bm_pfns; i++)
			enc ? clear_bit(i, shared_bm) : set_bit(i, shared_bm);
	atomic64_inc(&calls);
	if (ret)
		atomic64_inc(&errors);
	return ret;
}

static void fill(struct churn_page *c)
{
	u32 *p = page_address(c->pg);
	int i;

	for (i = 0; i < PAGE_SIZE / 4; i++)
		p[i] = get_random_u32();
	c->crc = crc32(0, p, PAGE_SIZE);
	c->written = true;
}

static int churn(void *arg)
{
	long cpu = (long)arg;
	struct churn_page *mine = owned[cpu];
	unsigned long i = 0;

	while (!kthread_should_stop()) {
		struct churn_page *c = &mine[i++ % CHURN_PAGES];
		unsigned long pfn = page_to_pfn(c->pg);

		atomic_inc(&busy);
		smp_mb__after_atomic();
		if (atomic_read(&paused)) {
			atomic_dec(&busy);
			msleep(20);
			continue;
		}
		if (i & 1) {
			/* convert shared, write, convert back private */
			map(pfn, 1, false);
			fill(c);
			map(pfn, 1, true);
		} else {
			/* Sean's race #1: write, then convert */
			fill(c);
			map(pfn, 1, false);
			map(pfn, 1, true);
		}
		smp_mb__before_atomic();
		atomic_dec(&busy);
		cond_resched();
	}
	return 0;
}

/* pause: no churn step is running or will start until resume (bounded wait) */
static int pause_churn(void)
{
	int i;

	atomic_set(&paused, 1);
	smp_mb();
	for (i = 0; i < 5000 && atomic_read(&busy); i++)
		msleep(1);
	return atomic_read(&busy) ? -EBUSY : 0;
}

static void verify(void)
{
	int cpu, i;

	for_each_online_cpu(cpu)
		for (i = 0; i < CHURN_PAGES; i++) {
			struct churn_page *c = &owned[cpu][i];

			if (!c->written)
				continue;
			if (crc32(0, page_address(c->pg), PAGE_SIZE) == c->crc)
				atomic64_inc(&verified);
			else {
				atomic64_inc(&crc_fail);
				pr_err("sevpeb-agent: CHECKSUM pfn %lx\n",
				       page_to_pfn(c->pg));
			}
		}
	pr_info("sevpeb-agent: VERIFIED %lld\n", atomic64_read(&verified));
}

static void expect(const char *what, long got, long want)
{
	atomic64_inc(got == want ? &bad_ok : &bad_fail);
	if (badlen < sizeof(badlog))
		badlen += scnprintf(badlog + badlen, sizeof(badlog) - badlen,
				    "%s %ld %ld\n", what, got, want);
	pr_info("sevpeb-agent: BAD %s -> %ld (%s)\n", what, got,
		got == want ? "ok" : "WRONG");
}

static void bad_calls(void)
{
	unsigned long pfn = page_to_pfn(owned[0][0].pg);

	badlen = 0;

	expect("misaligned", kvm_hypercall3(KVM_HC_MAP_GPA_RANGE,
		(pfn << PAGE_SHIFT) + 8, 1, 0), -KVM_EINVAL);
	expect("npages0", kvm_hypercall3(KVM_HC_MAP_GPA_RANGE,
		pfn << PAGE_SHIFT, 0, 0), -KVM_EINVAL);
	expect("overflow", kvm_hypercall3(KVM_HC_MAP_GPA_RANGE,
		pfn << PAGE_SHIFT, ~0UL, 0), -KVM_EINVAL);
	expect("reserved-attr", kvm_hypercall3(KVM_HC_MAP_GPA_RANGE,
		pfn << PAGE_SHIFT, 1, 1UL << 5), -KVM_EINVAL);
	expect("outside-ram", kvm_hypercall3(KVM_HC_MAP_GPA_RANGE,
		1UL << 46, 1, 0), -KVM_EINVAL);
	expect("pagesize-3", kvm_hypercall3(KVM_HC_MAP_GPA_RANGE,
		pfn << PAGE_SHIFT, 1, 3), -KVM_EINVAL);
	expect("pagesize-15", kvm_hypercall3(KVM_HC_MAP_GPA_RANGE,
		pfn << PAGE_SHIFT, 1, 15), -KVM_EINVAL);
	expect("nr-99", kvm_hypercall3(99, 0, 0, 0), -KVM_ENOSYS);
}

static int record_show(struct seq_file *m, void *v)
{
	unsigned long start, end = 0;

	for (;;) {
		start = find_next_bit(shared_bm, bm_pfns, end);
		if (start >= bm_pfns)
			break;
		end = find_next_zero_bit(shared_bm, bm_pfns, start);
		seq_printf(m, "%lu %lu\n", start, end - start);
	}
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(record);

static int stats_show(struct seq_file *m, void *v)
{
	seq_printf(m, "calls %lld errors %lld verified %lld crc_fail %lld bad_ok %lld bad_fail %lld paused %d\n",
		   atomic64_read(&calls), atomic64_read(&errors),
		   atomic64_read(&verified), atomic64_read(&crc_fail),
		   atomic64_read(&bad_ok), atomic64_read(&bad_fail),
		   atomic_read(&paused));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(stats);

static int bad_show(struct seq_file *m, void *v)
{
	seq_write(m, badlog, badlen);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(bad);

/* mark every step-th page of [pfn, pfn + n) shared: memory the guest onlined */
static long mark_online(unsigned long pfn, unsigned long n, unsigned long step)
{
	unsigned long i, done = 0;

	if (!step || pfn + n > bm_pfns)
		return -EINVAL;
	for (i = 0; i < n; i += step) {
		if (!pfn_to_online_page(pfn + i))
			return -ENXIO;
		if (map(pfn + i, 1, false))
			return -EIO;
		done++;
	}
	pr_info("sevpeb-agent: MARKED %lu pages in [%#lx, %#lx)\n", done, pfn, pfn + n);
	return 0;
}

static ssize_t ctl_write(struct file *f, const char __user *ubuf, size_t len,
			 loff_t *off)
{
	char buf[64] = {};
	unsigned long a, b, c;
	long ret = 0;

	if (copy_from_user(buf, ubuf, min(len, sizeof(buf) - 1)))
		return -EFAULT;
	if (!strncmp(buf, "pause", 5))
		ret = pause_churn();
	else if (!strncmp(buf, "resume", 6))
		atomic_set(&paused, 0);
	else if (!strncmp(buf, "verify", 6))
		verify();
	else if (!strncmp(buf, "bad", 3))
		bad_calls();
	else if (!strncmp(buf, "offline", 7) || !strncmp(buf, "reboot", 6))
		wrmsrl(MSR_KVM_MIGRATION_CONTROL, 0);
	else if (!strncmp(buf, "ready", 5))
		wrmsrl(MSR_KVM_MIGRATION_CONTROL, KVM_MIGRATION_READY);
	else if (sscanf(buf, "mark %lu %lu %lu", &a, &b, &c) == 3)
		ret = mark_online(a, b, c);
	else
		return -EINVAL;
	return ret ? ret : len;
}

static const struct file_operations ctl_fops = { .write = ctl_write };

static void boot_pattern(void)
{
	unsigned long ram = totalram_pages(), n, i, pfn;
	struct page *pg;
	int cpu;

	/* bounce buffer: SWIOTLB's 6 % clamped to [64 MiB, 1 GiB], scaled */
	n = bounce_mb ? bounce_mb << (20 - PAGE_SHIFT) : ram * 6 / 100;
	n = clamp(n, ram / 64, ram / 4);
	/* (alloc_contig_pages is not exported: blocks of MAX_ORDER - 1) */
	for (i = 0; i < n; i += 1UL << (MAX_ORDER - 1)) {
		pg = alloc_pages(GFP_KERNEL | __GFP_NOWARN, MAX_ORDER - 1);
		if (pg)
			map(page_to_pfn(pg), 1UL << (MAX_ORDER - 1), false);
	}
	/* per-vCPU shared pages (steal time, GHCB-like) */
	for_each_online_cpu(cpu) {
		pg = alloc_page(GFP_KERNEL);
		if (pg)
			map(page_to_pfn(pg), 1, false);
	}
	/* __bss_decrypted-like range: 8 contiguous pages */
	pg = alloc_pages(GFP_KERNEL, 3);
	if (pg)
		map(page_to_pfn(pg), 8, false);
	/* OVMF-like storm: allocate-shared / free-private pairs */
	for (i = 0; i + 1 < storm_calls; i += 2) {
		pg = alloc_pages(GFP_KERNEL, i % 3);
		if (!pg)
			continue;
		pfn = page_to_pfn(pg);
		map(pfn, 1UL << (i % 3), false);
		map(pfn, 1UL << (i % 3), true);
		__free_pages(pg, i % 3);
	}
}

static int __init agent_init(void)
{
	unsigned int eax = cpuid_eax(KVM_CPUID_FEATURES);
	int cpu, i;

	if (!kvm_para_available() ||
	    !(eax & (1 << KVM_FEATURE_HC_MAP_GPA_RANGE)) ||
	    !(eax & (1 << KVM_FEATURE_MIGRATION_CONTROL))) {
		pr_err("sevpeb-agent: NO-FEATURES cpuid 0x40000001 eax %#x\n", eax);
		return -ENODEV;
	}
	bm_pfns = max_gfn;
	shared_bm = vzalloc(BITS_TO_LONGS(bm_pfns) * sizeof(long));
	owned = kcalloc(nr_cpu_ids, sizeof(*owned), GFP_KERNEL);
	if (!shared_bm || !owned)
		return -ENOMEM;
	for_each_online_cpu(cpu)
		for (i = 0; i < CHURN_PAGES; i++)
			owned[cpu][i].pg = alloc_page(GFP_KERNEL);
	boot_pattern();
	wrmsrl(MSR_KVM_MIGRATION_CONTROL, KVM_MIGRATION_READY);
	dir = debugfs_create_dir("sevpeb", NULL);
	debugfs_create_file("record", 0444, dir, NULL, &record_fops);
	debugfs_create_file("stats", 0444, dir, NULL, &stats_fops);
	debugfs_create_file("bad", 0444, dir, NULL, &bad_fops);
	debugfs_create_file("ctl", 0200, dir, NULL, &ctl_fops);
	for_each_online_cpu(cpu) {
		threads[cpu] = kthread_create_on_cpu(churn, (void *)(long)cpu,
						     cpu, "sevpeb/%u");
		if (!IS_ERR(threads[cpu]))
			wake_up_process(threads[cpu]);
	}
	pr_info("sevpeb-agent: READY calls %lld\n", atomic64_read(&calls));
	return 0;
}

static void __exit agent_exit(void)
{
	int cpu;

	for_each_online_cpu(cpu)
		if (threads[cpu] && !IS_ERR(threads[cpu]))
			kthread_stop(threads[cpu]);
	debugfs_remove_recursive(dir);
	wrmsrl(MSR_KVM_MIGRATION_CONTROL, 0);
}

module_init(agent_init);
module_exit(agent_exit);
MODULE_LICENSE("GPL");
