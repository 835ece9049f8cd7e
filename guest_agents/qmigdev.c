// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qmp-mig-qmigdev: programs qmigdev test functions (devices/qmigdev, PCI
 * 1af4:10f7) from user space inside the guest, with no kernel driver bound:
 * BAR0 registers through an mmap of sysfs resource0, BAR2 device memory
 * through resource2, config space through the sysfs config file.  It starts
 * the device's DMA engines before a live migration and checks, after it,
 * what they wrote.  One line of JSON out.
 *
 *   list
 *   status     --bdf B
 *   dma-start  --bdf B [--ring-kb N] [--interval-us U]
 *   dma-verify --bdf B [--stop]
 *   mem-fill   --bdf B --seed S
 *   mem-check  --bdf B --seed S
 *   p2p-start  --bdf A --peer B [--slots N] [--path auto|vfio|direct]
 *              [--interval-us U]
 *   p2p-verify --bdf A --peer B [--stop]
 *   stop       --bdf B
 *   selftest   (no device: checks the CRC-32 and the record classifier)
 *
 * Output: 64-bit addresses as "0x..." strings, everything else as numbers.
 * The verify commands give every ring/window slot one class: empty (zero,
 * nothing due), ok (the due record, or one written during the scan), lost
 * (due record missing: zero or an older one), torn (non-zero but bad
 * magic, CRC or fill), future (seq not yet issued by the device: its state
 * is older than the memory it wrote), foreign (another writer's, or in the
 * wrong slot).  Independently, "stopped" counts this writer's records made
 * in a non-running state and "quiesced" (P2P) those made in RUNNING_P2P or
 * PRE_COPY_P2P.  Lists hold the first 16 seqs or slots of each kind.
 *
 * qmigdev facts this relies on (checked against devices/qmigdev/qmigdev.c):
 *  - BAR0 holds 32-bit little-endian registers; every guest access is
 *    trapped and forwarded to the device, which serves it under its mutex.
 *    A 64-bit register is a LO/HI pair.  Writes to CONT_BASE/CONT_SIZE are
 *    ignored while the ring is on, writes to P2P_TARGET/P2P_SLOTS while
 *    P2P TX is on.
 *  - CTRL.ENGINE_RESET turns every engine off (P2P RX included), puts both
 *    sequence numbers back to 1 and clears the counters and sticky STATUS
 *    bits; BAR2, SCRATCH, TAG and INTERVAL_US stay.  So dma-start also ends
 *    P2P on that function: start P2P after the rings.
 *  - Enabling CONT_CTRL checks BASE/SIZE (CONT_ERR) and resets HEAD to 0,
 *    but the sequence number carries on.  Record seq s is in ring slot
 *    (s-1) mod nslots only because dma-start enables the ring right after
 *    ENGINE_RESET; dma-verify checks HEAD == (next-1) mod nslots.
 *  - Records are DMAed and registers changed with the device mutex held,
 *    so once the write clearing CONT_CTRL or P2P_CTRL.TX returns, no
 *    further record of that engine is written.
 *  - A one-shot DMA runs synchronously inside the DMA_CMD write; then
 *    DMA_RESULT holds its errno and DMA_COUNT has grown by one if it worked.
 *  - Records: 64 bytes, magic "QREC", kind (1 ring, 2 P2P), src = TAG, seq,
 *    writer's CLOCK_REALTIME, writer's migration state, slot, fill[i] =
 *    (u8)(seq + i), zlib CRC-32 of bytes 0..59.  Running states are 2, 5,
 *    6, 7; 5 and 7 are the P2P-quiesced ones.
 *  - P2P record seq s goes to window slot (s-1) mod P2P_SLOTS, whatever
 *    happened before.  The receiver counts (P2P_RECEIVED) a window slot
 *    holding a valid kind-2 record whose seq differs from the last one seen
 *    there, scanning while its RX bit is set and it runs, once per its own
 *    INTERVAL_US rounded up to a host jiffy.
 *  - BAR2 is 64 KiB; 0xf000-0xffff is the P2P receive window (64 slots of
 *    64 bytes), so mem-fill and mem-check use 0..0xefff only.
 *  - The device itself ignores COMMAND.MEM/MASTER, but QEMU maps the BARs
 *    into the guest only while MEM is set, and P2P through vfio_dma_rw needs
 *    the peer's BAR2 mapped.
 * Guest facts: no IOMMU in the guest, so IOVA = guest-physical = the bus
 * address in sysfs "resource"; x86_64, so records are read in place as
 * little-endian structs.  DMA buffers are 2 MiB hugetlbfs pages kept as
 * files: physically contiguous, never swapped, and still allocated after
 * the process exits, so a later run (after a migration) maps the same
 * guest-physical page.  Nothing in this small guest migrates huge pages
 * (no memory hot-unplug, no CMA or gigantic-page allocation).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define QMIG_VENDOR 0x1af4
#define QMIG_DEVICE 0x10f7
#define PCI_DEVICES "/sys/bus/pci/devices"
#define IORESOURCE_MEM 0x200
#define PCI_COMMAND 4
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4

#define BAR0_SIZE 0x1000
#define BAR2_SIZE 0x10000
#define RX_OFF 0xf000		/* P2P receive window in BAR2 */
#define RX_SLOTS 64
#define MEM_BYTES RX_OFF	/* device memory that is not the window */
#define CHUNK 4096		/* the device's precopy/stream granule */

enum {
	REG_ID = 0x000, REG_VERSION = 0x004, REG_STATUS = 0x008, REG_CTRL = 0x00c,
	REG_SCRATCH = 0x010, REG_TAG = 0x014, REG_INTERVAL_US = 0x018,
	REG_MIG_STATE = 0x01c, REG_DMA_SRC = 0x020, REG_DMA_DST = 0x028,
	REG_DMA_LEN = 0x030, REG_DMA_CMD = 0x034, REG_DMA_COUNT = 0x038,
	REG_DMA_RESULT = 0x03c, REG_CONT_BASE = 0x040, REG_CONT_SIZE = 0x048,
	REG_CONT_CTRL = 0x04c, REG_CONT_SEQ = 0x050, REG_CONT_HEAD = 0x058,
	REG_CONT_ERRORS = 0x05c, REG_P2P_TARGET = 0x060, REG_P2P_SLOTS = 0x068,
	REG_P2P_CTRL = 0x06c, REG_P2P_SEQ = 0x070, REG_P2P_SENT = 0x078,
	REG_P2P_ERRORS = 0x07c, REG_RECORDS = 0x080, REG_P2P_RECEIVED = 0x088,
	REG_P2P_LAST_PATH = 0x08c, REG_P2P_RX_LAST = 0x090,
};

#define ID_MAGIC 0x47494d51		/* "QMIG" */
#define CTRL_ENGINE_RESET 0x1
#define DMA_CMD_TO_DEV 1
#define DMA_CMD_FROM_DEV 2
#define CONT_EN 0x1
#define P2P_TX 0x1
#define P2P_PATH_SHIFT 1
#define P2P_RX 0x10
#define INTERVAL_MIN_US 100
#define INTERVAL_MAX_US 1000000

static const char *const status_bit_names[] = {
	[0] = "dma_done", [1] = "dma_err", [2] = "cont_err", [3] = "p2p_err",
	[4] = "unmapped", [8] = "cont_on", [9] = "p2p_tx_on", [10] = "p2p_rx_on",
	[11] = "dma_allowed", [12] = "p2p_allowed",
};
#define ST_CONT_ERR (1u << 2)
#define ST_P2P_ERR (1u << 3)
#define ST_CONT_ON (1u << 8)
#define ST_STATE(st) (((st) >> 16) & 0xf)

static const char *const state_names[] = {
	"ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P",
	"PRE_COPY", "PRE_COPY_P2P",
};
static const char *const path_names[] = { "auto", "vfio", "direct" };

#define HUGE_SIZE (2UL << 20)
#define HUGE_DIR "/dev/hugepages"
#define HUGE_SYSFS "/sys/kernel/mm/hugepages/hugepages-2048kB/"
#define HUGETLBFS_MAGIC 0x958458f6
#define PAGEMAP_PRESENT (1ULL << 63)
#define PAGEMAP_PFN_MASK ((1ULL << 55) - 1)
#define STATE_DIR "/run/qmp-mig-qmigdev"

#define SETTLE_TIMEOUT_NS 5000000000LL
#define START_WAIT_MAX_NS 3000000000LL

struct options {
	const char *bdf;
	const char *peer;
	long ring_kb;
	long interval_us;
	long slots;
	long path;
	uint64_t seed;
	bool has_seed;
	bool stop;
};

/* ---------------------------------------------------------------- output */


/*
 * The answer is built in memory and printed at the end, so a die() on the
 * way still yields exactly one JSON line.  Keys and strings are our own
 * (bdfs are validated), so nothing needs escaping.
 */
struct json {
	FILE *f;
	char *buf;
	size_t len;
	bool first;		/* no comma before the next member */
};

static void j_begin(struct json *j)
{
	j->f = open_memstream(&j->buf, &j->len);
	if (!j->f)
		die("open_memstream: %s", strerror(errno));
	fputc('{', j->f);
	j->first = true;
}

static void j_key(struct json *j, const char *key)
{
	if (!j->first)
		fputc(',', j->f);
	j->first = false;
	if (key)
		fprintf(j->f, "\"%s\":", key);
}

static void j_u64(struct json *j, const char *k, uint64_t v) { j_key(j, k); fprintf(j->f, "%" PRIu64, v); }
static void j_i64(struct json *j, const char *k, int64_t v) { j_key(j, k); fprintf(j->f, "%" PRId64, v); }
static void j_hex(struct json *j, const char *k, uint64_t v) { j_key(j, k); fprintf(j->f, "\"0x%" PRIx64 "\"", v); }
static void j_str(struct json *j, const char *k, const char *s) { j_key(j, k); fprintf(j->f, "\"%s\"", s); }
static void j_bool(struct json *j, const char *k, bool v) { j_key(j, k); fputs(v ? "true" : "false", j->f); }
static void j_null(struct json *j, const char *k) { j_key(j, k); fputs("null", j->f); }

static void j_open(struct json *j, const char *key, char c)
{
	j_key(j, key);
	fputc(c, j->f);
	j->first = true;
}

static void j_close(struct json *j, char c)
{
	fputc(c, j->f);
	j->first = false;
}

static void j_end(struct json *j)
{
	fputs("}\n", j->f);
	fclose(j->f);
	fputs(j->buf, stdout);
	free(j->buf);
}

/* The record layout and the slot classifier, shared with the micro guest's agent. */
#include "qmigdev_records.h"

/* ---------------------------------------------------------------- misc */

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };

	nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------- device */

struct qdev {
	const char *bdf;
	uint64_t bar0_pa, bar2_pa;
	volatile uint8_t *bar0;
	volatile uint8_t *bar2;		/* NULL unless asked for */
};

#define barrier() __asm__ __volatile__("" ::: "memory")

/*
 * The barriers keep the compiler from moving plain accesses to DMA buffers
 * across a register access (the CPU does not: the BAR mappings are UC).
 */
static uint32_t rd32(const struct qdev *d, uint32_t off)
{
	uint32_t v;

	barrier();
	v = *(volatile uint32_t *)(d->bar0 + off);
	barrier();
	return v;
}

static void wr32(const struct qdev *d, uint32_t off, uint32_t v)
{
	barrier();
	*(volatile uint32_t *)(d->bar0 + off) = v;
	barrier();
}

/*
 * 64-bit registers as two 32-bit reads, hi/lo/hi: 32-bit accesses work on
 * every path a trapped access may take, and the retry catches a carry
 * into the high half between the two reads.
 */
static uint64_t rd64(const struct qdev *d, uint32_t off)
{
	uint32_t hi, lo;

	do {
		hi = rd32(d, off + 4);
		lo = rd32(d, off);
	} while (rd32(d, off + 4) != hi);
	return (uint64_t)hi << 32 | lo;
}

static void wr64(const struct qdev *d, uint32_t off, uint64_t v)
{
	wr32(d, off, (uint32_t)v);
	wr32(d, off + 4, (uint32_t)(v >> 32));
}

/*
 * BAR2 with aligned 8-byte accesses only: memcpy may use wider or unaligned
 * accesses, which a trapped (TCG) mapping of device memory need not take.
 */
static void bar2_read(const struct qdev *d, uint32_t off, void *dst, size_t len)
{
	const volatile uint64_t *src = (const volatile uint64_t *)(d->bar2 + off);
	uint64_t *out = dst;

	for (size_t i = 0; i < len / 8; i++)
		out[i] = src[i];
}

static void bar2_write(const struct qdev *d, uint32_t off, const void *from, size_t len)
{
	volatile uint64_t *dst = (volatile uint64_t *)(d->bar2 + off);
	const uint64_t *in = from;

	for (size_t i = 0; i < len / 8; i++)
		dst[i] = in[i];
}

static bool read_sysfs_hex(const char *bdf, const char *attr, unsigned long *out)
{
	char path[512];
	FILE *f;
	int n;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/%s", bdf, attr);
	f = fopen(path, "r");
	if (!f)
		return false;
	n = fscanf(f, "%lx", out);
	fclose(f);
	return n == 1;
}

static bool is_qmigdev(const char *bdf)
{
	unsigned long vendor, device;

	return read_sysfs_hex(bdf, "vendor", &vendor) &&
	       read_sysfs_hex(bdf, "device", &device) &&
	       vendor == QMIG_VENDOR && device == QMIG_DEVICE;
}

/* Start address of memory BAR 'bar' if it is assigned and at least 'size'. */
static uint64_t bar_address(const char *bdf, int bar, uint64_t size)
{
	unsigned long long start = 0, end = 0, flags = 0;
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/resource", bdf);
	f = fopen(path, "r");
	if (!f)
		die("cannot read %s: %s", path, strerror(errno));
	for (int i = 0; i <= bar; i++) {
		if (fscanf(f, "%llx %llx %llx", &start, &end, &flags) != 3)
			die("%s: no line for BAR%d", path, bar);
	}
	fclose(f);
	if (!(flags & IORESOURCE_MEM) || !start || end < start + size - 1)
		die("%s: BAR%d is not an assigned memory BAR of %" PRIu64 " bytes "
		    "(start 0x%llx end 0x%llx flags 0x%llx)", bdf, bar, size,
		    start, end, flags);
	return start;
}

/* Set COMMAND bits through the config file, and make sure they stuck. */
static void enable_command(const char *bdf, uint16_t bits)
{
	char path[512];
	uint16_t cmd;
	int fd;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/config", bdf);
	fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		die("cannot open %s: %s (needs root)", path, strerror(errno));
	if (pread(fd, &cmd, 2, PCI_COMMAND) != 2)
		die("cannot read COMMAND of %s: %s", bdf, strerror(errno));
	if ((cmd & bits) != bits) {
		cmd |= bits;
		if (pwrite(fd, &cmd, 2, PCI_COMMAND) != 2)
			die("cannot write COMMAND of %s: %s", bdf, strerror(errno));
		if (pread(fd, &cmd, 2, PCI_COMMAND) != 2 || (cmd & bits) != bits)
			die("COMMAND of %s is 0x%04x after setting bits 0x%x", bdf,
			    cmd, bits);
	}
	close(fd);
}

static volatile uint8_t *map_resource(const char *bdf, int bar, size_t size)
{
	char path[512];
	void *p;
	int fd;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/resource%d", bdf, bar);
	fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0)
		die("cannot open %s: %s", path, strerror(errno));
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED)
		die("cannot mmap %s: %s", path, strerror(errno));
	return p;
}

static void check_bdf(const char *bdf, const char *opt)
{
	if (!bdf)
		die("missing --%s (see 'list')", opt);
	if (!*bdf || strchr(bdf, '/') || strchr(bdf, '"') || strchr(bdf, '\\') ||
	    strlen(bdf) > 64 || bdf[0] == '.')
		die("invalid --%s '%s'", opt, bdf);
	if (!is_qmigdev(bdf))
		die("%s is not a qmigdev function (%04x:%04x)", bdf, QMIG_VENDOR,
		    QMIG_DEVICE);
}

/*
 * Map a function's BARs.  MEM is needed for any register access (QEMU only
 * maps decoded BARs); MASTER is set before using the DMA engines, as a
 * driver would, although the device does not check it.
 */
static void dev_open(struct qdev *d, const char *bdf, const char *opt,
		     bool master, bool need_bar2)
{
	uint32_t id;

	check_bdf(bdf, opt);
	memset(d, 0, sizeof(*d));
	d->bdf = bdf;
	d->bar0_pa = bar_address(bdf, 0, BAR0_SIZE);
	d->bar2_pa = bar_address(bdf, 2, BAR2_SIZE);
	enable_command(bdf, PCI_COMMAND_MEMORY | (master ? PCI_COMMAND_MASTER : 0));
	d->bar0 = map_resource(bdf, 0, BAR0_SIZE);
	id = rd32(d, REG_ID);
	if (id != ID_MAGIC)
		die("%s: ID register reads 0x%08x, not 0x%08x (\"QMIG\")", bdf, id,
		    ID_MAGIC);
	if (need_bar2)
		d->bar2 = map_resource(bdf, 2, BAR2_SIZE);
}

/* ------------------------------------------------------------ huge pages */

static long read_long(const char *path)
{
	FILE *f = fopen(path, "r");
	long v;

	if (!f)
		die("cannot read %s: %s (no 2 MiB hugetlb support?)", path, strerror(errno));
	if (fscanf(f, "%ld", &v) != 1)
		die("malformed %s", path);
	fclose(f);
	return v;
}

static void ensure_hugetlbfs(void)
{
	struct statfs sfs;

	if (statfs(HUGE_DIR, &sfs) != 0 || sfs.f_type != HUGETLBFS_MAGIC) {
		if (mkdir(HUGE_DIR, 0755) != 0 && errno != EEXIST)
			die("cannot create " HUGE_DIR ": %s", strerror(errno));
		if (mount("hugetlbfs", HUGE_DIR, "hugetlbfs", 0, "pagesize=2M") != 0)
			die("cannot mount hugetlbfs on " HUGE_DIR ": %s", strerror(errno));
		if (statfs(HUGE_DIR, &sfs) != 0)
			die("statfs " HUGE_DIR ": %s", strerror(errno));
	}
	if ((unsigned long)sfs.f_bsize != HUGE_SIZE)
		die(HUGE_DIR " has %ld-byte huge pages, not 2 MiB", (long)sfs.f_bsize);
}

/*
 * Make one 2 MiB page available (free and not reserved for another mapping),
 * growing the pool if needed.  A fragmented 256 MiB guest may not find one.
 */
static void reserve_huge_page(void)
{
	long avail = read_long(HUGE_SYSFS "free_hugepages") -
		     read_long(HUGE_SYSFS "resv_hugepages");
	long want = read_long(HUGE_SYSFS "nr_hugepages") + 1 - avail;
	FILE *f;

	if (avail >= 1)
		return;
	f = fopen(HUGE_SYSFS "nr_hugepages", "w");
	if (!f || fprintf(f, "%ld\n", want) < 0 || fclose(f) != 0)
		die("cannot raise " HUGE_SYSFS "nr_hugepages to %ld: %s", want,
		    strerror(errno));
	/* The kernel grows the pool only as far as it finds free 2 MiB blocks. */
	if (read_long(HUGE_SYSFS "free_hugepages") -
	    read_long(HUGE_SYSFS "resv_hugepages") < 1)
		die("no free 2 MiB huge page after asking for %ld (the pool has %ld): "
		    "guest memory too fragmented, reserve at boot with hugepages=N",
		    want, read_long(HUGE_SYSFS "nr_hugepages"));
}

static uint64_t virt_to_phys(const void *va)
{
	uint64_t entry;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	off_t pos = (off_t)((uintptr_t)va / 4096 * sizeof(entry));

	if (fd < 0)
		die("cannot open /proc/self/pagemap: %s", strerror(errno));
	if (pread(fd, &entry, sizeof(entry), pos) != sizeof(entry))
		die("cannot read /proc/self/pagemap: %s", strerror(errno));
	close(fd);
	if (!(entry & PAGEMAP_PRESENT))
		die("DMA buffer page at %p is not present after touching it", va);
	if (!(entry & PAGEMAP_PFN_MASK))
		die("pagemap hides the PFN (needs root / CAP_SYS_ADMIN)");
	return (entry & PAGEMAP_PFN_MASK) * 4096 + (uintptr_t)va % 4096;
}

struct dmabuf {
	char path[256];
	uint8_t *va;		/* HUGE_SIZE bytes */
	uint64_t gpa;
};

/*
 * Map the huge-page file of a function ("ring" or "buf"): created on demand,
 * or, without 'create', only if an earlier run made it, since a new page
 * would not hold what the device wrote.  mem-check may create "buf": it
 * only uses it as a scratch DMA target.
 */
static void dmabuf_map(struct dmabuf *b, const char *what, const char *bdf,
		       bool create)
{
	struct stat st;
	int fd;

	ensure_hugetlbfs();
	snprintf(b->path, sizeof(b->path), HUGE_DIR "/qmigdev-%s-%s", what, bdf);
	for (char *p = b->path + strlen(HUGE_DIR "/qmigdev-"); *p; p++)
		if (*p == ':' || *p == '.')
			*p = '_';
	fd = open(b->path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (fd < 0)
		die("cannot open %s: %s%s", b->path, strerror(errno),
		    errno == ENOENT ? " (run dma-start / mem-fill first)" : "");
	if (fstat(fd, &st) != 0)
		die("fstat %s: %s", b->path, strerror(errno));
	if (!create && (st.st_size < (off_t)HUGE_SIZE || st.st_blocks == 0))
		die("%s holds no huge page: nothing was written to it", b->path);
	if (st.st_blocks == 0)
		reserve_huge_page();
	if (st.st_size < (off_t)HUGE_SIZE && ftruncate(fd, HUGE_SIZE) != 0)
		die("cannot size %s: %s", b->path, strerror(errno));
	b->va = mmap(NULL, HUGE_SIZE, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_POPULATE, fd, 0);
	close(fd);
	if (b->va == MAP_FAILED)
		die("cannot map %s: %s", b->path, strerror(errno));
	*(volatile uint8_t *)b->va;	/* fault it in if POPULATE did not */
	b->gpa = virt_to_phys(b->va);
	if (b->gpa % HUGE_SIZE)
		die("%s maps to gpa 0x%" PRIx64 ", not a 2 MiB page", b->path, b->gpa);
}

/* ---------------------------------------------------------------- records */

/*
 * Copy the slots out of the ring (RAM) or the window (BAR2), then copy again
 * the slots that looked torn: a record being written during the first pass
 * is whole by then.
 */
static struct record *copy_slots(const struct qdev *d, const uint8_t *ram,
				 uint32_t nslots)
{
	struct record *rec = malloc((size_t)nslots * REC_SIZE);

	if (!rec)
		die("out of memory for %u slots", nslots);
	for (int pass = 0; pass < 2; pass++) {
		for (uint32_t i = 0; i < nslots; i++) {
			if (pass && (record_zero(&rec[i]) || record_intact(&rec[i])))
				continue;
			if (ram)
				memcpy(&rec[i], ram + (size_t)i * REC_SIZE, REC_SIZE);
			else
				bar2_read(d, RX_OFF + i * REC_SIZE, &rec[i], REC_SIZE);
		}
		barrier();
	}
	return rec;
}

/*
 * After enabling an engine, wait (bounded) for its first record or its ERR
 * bit, so that a bad address fails the start command, not the verify.
 */
static uint32_t wait_first_record(const struct qdev *d, uint32_t seq_reg,
				  uint64_t seq0, uint32_t err_bit, long interval_us)
{
	int64_t wait = 3LL * interval_us * 1000 + 200000000LL;
	int64_t deadline = now_ns() + (wait < START_WAIT_MAX_NS ? wait : START_WAIT_MAX_NS);
	uint32_t st;

	for (;;) {
		st = rd32(d, REG_STATUS);
		if ((st & err_bit) || rd64(d, seq_reg) != seq0 || now_ns() > deadline)
			return st;
		sleep_us(1000);
	}
}

/* ---------------------------------------------------------------- commands */

static void j_status_bits(struct json *j, uint32_t st)
{
	j_open(j, "status_bits", '{');
	for (unsigned b = 0; b < sizeof(status_bit_names) / sizeof(status_bit_names[0]); b++)
		if (status_bit_names[b])
			j_bool(j, status_bit_names[b], st & (1u << b));
	j_u64(j, "state", ST_STATE(st));
	j_close(j, '}');
}

static const char *state_name(uint32_t s)
{
	return s < sizeof(state_names) / sizeof(state_names[0]) ? state_names[s] : "?";
}

static int not_dot(const struct dirent *e)
{
	return e->d_name[0] != '.';
}

static void cmd_list(const struct options *o)
{
	struct dirent **entries;
	struct json j;
	int n;

	(void)o;
	n = scandir(PCI_DEVICES, &entries, not_dot, alphasort);
	if (n < 0)
		die("cannot list " PCI_DEVICES ": %s", strerror(errno));
	j_begin(&j);
	j_open(&j, "devices", '[');
	for (int i = 0; i < n; i++) {
		struct qdev d;

		if (is_qmigdev(entries[i]->d_name)) {
			dev_open(&d, entries[i]->d_name, "bdf", false, false);
			j_open(&j, NULL, '{');
			j_str(&j, "bdf", d.bdf);
			j_hex(&j, "bar0", d.bar0_pa);
			j_hex(&j, "bar2", d.bar2_pa);
			j_u64(&j, "tag", rd32(&d, REG_TAG));
			j_u64(&j, "mig_state", rd32(&d, REG_MIG_STATE));
			j_u64(&j, "status", rd32(&d, REG_STATUS));
			j_u64(&j, "version", rd32(&d, REG_VERSION));
			j_close(&j, '}');
		}
		free(entries[i]);
	}
	free(entries);
	j_close(&j, ']');
	j_end(&j);
}

static void cmd_status(const struct options *o)
{
	/* The README's register table; addresses print as hex strings. */
	static const struct {
		const char *name;
		uint32_t off;
		char kind;	/* '4' 32-bit, '8' 64-bit number, 'a' 64-bit address */
	} regs[] = {
		{ "id", REG_ID, '4' }, { "version", REG_VERSION, '4' },
		{ "status", REG_STATUS, '4' }, { "ctrl", REG_CTRL, '4' },
		{ "scratch", REG_SCRATCH, '4' }, { "tag", REG_TAG, '4' },
		{ "interval_us", REG_INTERVAL_US, '4' },
		{ "mig_state", REG_MIG_STATE, '4' },
		{ "dma_src", REG_DMA_SRC, 'a' }, { "dma_dst", REG_DMA_DST, 'a' },
		{ "dma_len", REG_DMA_LEN, '4' }, { "dma_cmd", REG_DMA_CMD, '4' },
		{ "dma_count", REG_DMA_COUNT, '4' },
		{ "dma_result", REG_DMA_RESULT, '4' },
		{ "cont_base", REG_CONT_BASE, 'a' }, { "cont_size", REG_CONT_SIZE, '4' },
		{ "cont_ctrl", REG_CONT_CTRL, '4' }, { "cont_seq", REG_CONT_SEQ, '8' },
		{ "cont_head", REG_CONT_HEAD, '4' },
		{ "cont_errors", REG_CONT_ERRORS, '4' },
		{ "p2p_target", REG_P2P_TARGET, 'a' },
		{ "p2p_slots", REG_P2P_SLOTS, '4' }, { "p2p_ctrl", REG_P2P_CTRL, '4' },
		{ "p2p_seq", REG_P2P_SEQ, '8' }, { "p2p_sent", REG_P2P_SENT, '4' },
		{ "p2p_errors", REG_P2P_ERRORS, '4' }, { "records", REG_RECORDS, '8' },
		{ "p2p_received", REG_P2P_RECEIVED, '4' },
		{ "p2p_last_path", REG_P2P_LAST_PATH, '4' },
		{ "p2p_rx_last", REG_P2P_RX_LAST, '8' },
	};
	struct qdev d;
	struct json j;
	uint32_t st;

	dev_open(&d, o->bdf, "bdf", false, false);
	st = rd32(&d, REG_STATUS);
	j_begin(&j);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "bar0", d.bar0_pa);
	j_hex(&j, "bar2", d.bar2_pa);
	for (size_t i = 0; i < sizeof(regs) / sizeof(regs[0]); i++) {
		if (regs[i].off == REG_STATUS)
			j_u64(&j, "status", st);
		else if (regs[i].kind == '4')
			j_u64(&j, regs[i].name, rd32(&d, regs[i].off));
		else if (regs[i].kind == '8')
			j_u64(&j, regs[i].name, rd64(&d, regs[i].off));
		else
			j_hex(&j, regs[i].name, rd64(&d, regs[i].off));
	}
	j_str(&j, "mig_state_name", state_name(rd32(&d, REG_MIG_STATE)));
	j_status_bits(&j, st);
	j_end(&j);
}

static void cmd_dma_start(const struct options *o)
{
	uint32_t bytes, st;
	struct dmabuf ring;
	struct qdev d;
	struct json j;

	if (o->ring_kb < 1 || o->ring_kb > (long)(HUGE_SIZE / 1024))
		die("--ring-kb must be 1..%lu (one 2 MiB huge page)", HUGE_SIZE / 1024);
	bytes = (uint32_t)o->ring_kb * 1024;
	dev_open(&d, o->bdf, "bdf", true, false);
	/* Seqs restart at 1 and the head at 0 only through ENGINE_RESET. */
	wr32(&d, REG_CTRL, CTRL_ENGINE_RESET);
	dmabuf_map(&ring, "ring", d.bdf, true);
	memset(ring.va, 0, HUGE_SIZE);
	wr32(&d, REG_INTERVAL_US, (uint32_t)o->interval_us);
	wr64(&d, REG_CONT_BASE, ring.gpa);
	wr32(&d, REG_CONT_SIZE, bytes);
	if (rd64(&d, REG_CONT_BASE) != ring.gpa || rd32(&d, REG_CONT_SIZE) != bytes)
		die("%s: CONT_BASE/CONT_SIZE did not take 0x%" PRIx64 "/%u", d.bdf,
		    ring.gpa, bytes);
	wr32(&d, REG_CONT_CTRL, CONT_EN);
	st = rd32(&d, REG_STATUS);
	if (st & ST_CONT_ERR)
		die("%s: enabling the ring at 0x%" PRIx64 " (%u bytes) set CONT_ERR "
		    "(STATUS 0x%x)", d.bdf, ring.gpa, bytes, st);
	st = wait_first_record(&d, REG_CONT_SEQ, 1, ST_CONT_ERR, o->interval_us);
	if (st & ST_CONT_ERR)
		die("%s: the device could not write the ring at gpa 0x%" PRIx64
		    " (CONT_ERRORS %u, STATUS 0x%x)", d.bdf, ring.gpa,
		    rd32(&d, REG_CONT_ERRORS), st);
	j_begin(&j);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "ring_gpa", ring.gpa);
	j_u64(&j, "ring_bytes", bytes);
	j_u64(&j, "slots", bytes / REC_SIZE);
	j_u64(&j, "interval_us", rd32(&d, REG_INTERVAL_US));
	j_u64(&j, "tag", rd32(&d, REG_TAG) & 0xffff);
	j_u64(&j, "next_seq", rd64(&d, REG_CONT_SEQ));
	j_u64(&j, "status", rd32(&d, REG_STATUS));
	j_end(&j);
}

static void cmd_dma_verify(const struct options *o)
{
	struct view v = { .kind = KIND_CONT, .first = 1 };
	uint64_t base, next, head_seq;
	uint32_t size, head;
	struct dmabuf ring;
	struct qdev d;
	struct json j;
	bool head_ok;

	dev_open(&d, o->bdf, "bdf", true, false);
	dmabuf_map(&ring, "ring", d.bdf, false);
	if (o->stop)
		wr32(&d, REG_CONT_CTRL, 0);
	base = rd64(&d, REG_CONT_BASE);
	size = rd32(&d, REG_CONT_SIZE);
	if (!size || size % REC_SIZE || size > HUGE_SIZE)
		die("%s: CONT_SIZE %u is not a ring dma-start set up", d.bdf, size);
	if (base != ring.gpa)
		die("%s: CONT_BASE 0x%" PRIx64 " is not %s at 0x%" PRIx64
		    " (device reset, or the ring file was recreated?)", d.bdf, base,
		    ring.path, ring.gpa);
	v.nslots = size / REC_SIZE;
	v.src = (uint16_t)rd32(&d, REG_TAG);
	/* HEAD and SEQ move together under the device lock: read them in a quiet moment. */
	do {
		head_seq = rd64(&d, REG_CONT_SEQ);
		head = rd32(&d, REG_CONT_HEAD);
	} while (rd64(&d, REG_CONT_SEQ) != head_seq);
	head_ok = head == (head_seq - 1) % v.nslots;

	v.next1 = rd64(&d, REG_CONT_SEQ);
	v.rec = copy_slots(&d, ring.va, v.nslots);
	v.next2 = next = rd64(&d, REG_CONT_SEQ);
	classify(&v);

	j_begin(&j);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "ring_gpa", ring.gpa);
	j_u64(&j, "next_seq", next);
	j_u64(&j, "records", rd64(&d, REG_RECORDS));
	j_u64(&j, "tag", v.src);
	j_view(&j, &v);
	j_u64(&j, "head", head);
	j_bool(&j, "head_ok", head_ok);
	j_u64(&j, "cont_errors", rd32(&d, REG_CONT_ERRORS));
	j_u64(&j, "status", rd32(&d, REG_STATUS));
	j_bool(&j, "ok_all", view_clean(&v) && head_ok);
	j_end(&j);
}

/*
 * One synchronous one-shot copy; DMA_RESULT is its errno.  A success that
 * does not bump DMA_COUNT means we are not looking at what we think.
 */
static uint32_t one_shot(const struct qdev *d, uint32_t cmd, uint64_t src,
			 uint64_t dst, uint32_t len)
{
	uint32_t count = rd32(d, REG_DMA_COUNT), result;

	wr64(d, REG_DMA_SRC, src);
	wr64(d, REG_DMA_DST, dst);
	wr32(d, REG_DMA_LEN, len);
	wr32(d, REG_DMA_CMD, cmd);
	result = rd32(d, REG_DMA_RESULT);
	if (!result && rd32(d, REG_DMA_COUNT) != count + 1)
		die("%s: one-shot DMA reported success but DMA_COUNT went %u -> %u",
		    d->bdf, count, rd32(d, REG_DMA_COUNT));
	return result;
}

static uint64_t count_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
	uint64_t n = 0;

	for (size_t i = 0; i < len; i++)
		n += a[i] != b[i];
	return n;
}

static void need_seed(const struct options *o)
{
	if (!o->has_seed)
		die("missing --seed S");
}

static void cmd_mem_fill(const struct options *o)
{
	static uint64_t want[MEM_BYTES / 8], got[MEM_BYTES / 8];
	struct dmabuf buf;
	struct qdev d;
	struct json j;
	uint64_t bad;
	uint32_t result;

	need_seed(o);
	dev_open(&d, o->bdf, "bdf", true, true);
	dmabuf_map(&buf, "buf", d.bdf, true);
	fill_pattern(want, MEM_BYTES / 8, o->seed);
	memcpy(buf.va, want, MEM_BYTES);
	result = one_shot(&d, DMA_CMD_TO_DEV, buf.gpa, 0, MEM_BYTES);
	if (result)
		die("%s: one-shot DMA guest -> BAR2 failed: DMA_RESULT %u (%s), "
		    "STATUS 0x%x", d.bdf, result, strerror((int)result),
		    rd32(&d, REG_STATUS));
	bar2_read(&d, 0, got, MEM_BYTES);
	bad = count_diff((uint8_t *)want, (uint8_t *)got, MEM_BYTES);
	if (bad)
		die("%s: %" PRIu64 " of %u bytes of BAR2 differ after the DMA",
		    d.bdf, bad, MEM_BYTES);
	j_begin(&j);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "seed", o->seed);
	j_u64(&j, "bytes", MEM_BYTES);
	j_hex(&j, "buf_gpa", buf.gpa);
	j_u64(&j, "dma_result", result);
	j_u64(&j, "mmap_bytes_differing", bad);
	j_end(&j);
}

static void cmd_mem_check(const struct options *o)
{
	static uint64_t want[MEM_BYTES / 8], got[MEM_BYTES / 8];
	struct seqlist chunks = { 0 };
	uint64_t mmap_bad, dma_bad;
	struct dmabuf buf;
	struct qdev d;
	struct json j;
	uint32_t result;

	need_seed(o);
	dev_open(&d, o->bdf, "bdf", true, true);
	dmabuf_map(&buf, "buf", d.bdf, true);
	fill_pattern(want, MEM_BYTES / 8, o->seed);

	/* (a) what a CPU sees through the BAR2 mapping */
	bar2_read(&d, 0, got, MEM_BYTES);
	mmap_bad = count_diff((uint8_t *)want, (uint8_t *)got, MEM_BYTES);
	for (uint32_t c = 0; c < MEM_BYTES / CHUNK; c++)
		if (memcmp((uint8_t *)want + c * CHUNK, (uint8_t *)got + c * CHUNK, CHUNK))
			list_add(&chunks, c);

	/* (b) what the device's own DMA engine reads out of it */
	memset(buf.va, 0, MEM_BYTES);
	result = one_shot(&d, DMA_CMD_FROM_DEV, 0, buf.gpa, MEM_BYTES);
	dma_bad = count_diff((uint8_t *)want, buf.va, MEM_BYTES);

	j_begin(&j);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "seed", o->seed);
	j_u64(&j, "bytes", MEM_BYTES);
	j_u64(&j, "mmap_bytes_differing", mmap_bad);
	j_list(&j, "chunks_differing", &chunks);
	j_u64(&j, "dma_result", result);
	j_u64(&j, "dma_bytes_differing", dma_bad);
	j_bool(&j, "ok_all", !mmap_bad && !result && !dma_bad);
	j_end(&j);
}

/*
 * P2P baselines, kept in a small file (guest RAM, so it migrates too): the
 * sender's first seq, and both counters when p2p-start ran.  Without the
 * file, a fresh device's values (1, 0, 0) are assumed.
 */
struct p2p_base {
	char peer[80];
	uint64_t first;
	uint32_t sent0, received0;
};

static void p2p_state_path(char *buf, size_t size, const char *bdf)
{
	snprintf(buf, size, STATE_DIR "/p2p-%s", bdf);
}

static void p2p_save(const char *bdf, const struct p2p_base *b)
{
	char path[256], tmp[272];
	FILE *f;

	if (mkdir("/run", 0755) != 0 && errno != EEXIST)
		die("cannot create /run: %s", strerror(errno));
	if (mkdir(STATE_DIR, 0755) != 0 && errno != EEXIST)
		die("cannot create " STATE_DIR ": %s", strerror(errno));
	p2p_state_path(path, sizeof(path), bdf);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (!f || fprintf(f, "%s %" PRIu64 " %u %u\n", b->peer, b->first, b->sent0,
			  b->received0) < 0 || fclose(f) != 0 || rename(tmp, path) != 0)
		die("cannot write %s: %s", path, strerror(errno));
}

static void p2p_load(const char *bdf, const char *peer, struct p2p_base *b)
{
	char path[256];
	FILE *f;

	p2p_state_path(path, sizeof(path), bdf);
	*b = (struct p2p_base){ .first = 1 };
	f = fopen(path, "r");
	if (!f)
		return;
	if (fscanf(f, "%79s %" SCNu64 " %u %u", b->peer, &b->first, &b->sent0,
		   &b->received0) != 4)
		die("malformed %s", path);
	fclose(f);
	if (strcmp(b->peer, peer))
		die("p2p-start made %s send to %s, not to %s", bdf, b->peer, peer);
}

static void cmd_p2p_start(const struct options *o)
{
	static const uint64_t zero[RX_SLOTS * REC_SIZE / 8];
	struct p2p_base base = { 0 };
	uint32_t ctrl_a, ctrl_b, st;
	struct qdev a, b;
	struct json j;
	uint64_t target;

	if (o->slots < 1 || o->slots > RX_SLOTS)
		die("--slots must be 1..%d", RX_SLOTS);
	dev_open(&a, o->bdf, "bdf", true, false);
	dev_open(&b, o->peer, "peer", true, true);
	if (!strcmp(a.bdf, b.bdf))
		die("--bdf and --peer are the same function");
	target = b.bar2_pa + RX_OFF;

	/* TARGET/SLOTS only take while TX is off; stop first, then clean the window. */
	ctrl_a = rd32(&a, REG_P2P_CTRL);
	if (ctrl_a & P2P_TX) {
		wr32(&a, REG_P2P_CTRL, ctrl_a & ~P2P_TX);
		if (rd32(&a, REG_P2P_CTRL) & P2P_TX)
			die("%s: P2P TX does not turn off", a.bdf);
	}
	bar2_write(&b, RX_OFF, zero, sizeof(zero));
	ctrl_b = rd32(&b, REG_P2P_CTRL);
	wr32(&b, REG_P2P_CTRL, ctrl_b | P2P_RX);
	if (!(rd32(&b, REG_P2P_CTRL) & P2P_RX))
		die("%s: P2P RX does not turn on (P2P_CTRL 0x%x, STATUS 0x%x)", b.bdf,
		    rd32(&b, REG_P2P_CTRL), rd32(&b, REG_STATUS));

	snprintf(base.peer, sizeof(base.peer), "%s", b.bdf);
	base.first = rd64(&a, REG_P2P_SEQ);
	base.sent0 = rd32(&a, REG_P2P_SENT);
	base.received0 = rd32(&b, REG_P2P_RECEIVED);
	p2p_save(a.bdf, &base);

	wr32(&a, REG_INTERVAL_US, (uint32_t)o->interval_us);
	wr64(&a, REG_P2P_TARGET, target);
	wr32(&a, REG_P2P_SLOTS, (uint32_t)o->slots);
	if (rd64(&a, REG_P2P_TARGET) != target || rd32(&a, REG_P2P_SLOTS) != (uint32_t)o->slots)
		die("%s: P2P_TARGET/P2P_SLOTS did not take 0x%" PRIx64 "/%ld", a.bdf,
		    target, o->slots);
	wr32(&a, REG_P2P_CTRL, (ctrl_a & P2P_RX) | P2P_TX |
	     (uint32_t)o->path << P2P_PATH_SHIFT);
	st = wait_first_record(&a, REG_P2P_SEQ, base.first, ST_P2P_ERR, o->interval_us);
	if (st & ST_P2P_ERR)
		die("%s: P2P to %s (0x%" PRIx64 ", path %s) failed: P2P_ERRORS %u, "
		    "STATUS 0x%x%s", a.bdf, b.bdf, target, path_names[o->path],
		    rd32(&a, REG_P2P_ERRORS), st,
		    o->path == 1 ? " (path vfio needs QEMU to map the peer's BAR2)" : "");
	j_begin(&j);
	j_str(&j, "bdf", a.bdf);
	j_str(&j, "peer", b.bdf);
	j_hex(&j, "target", target);
	j_u64(&j, "slots", (uint64_t)o->slots);
	j_str(&j, "path", path_names[o->path]);
	j_u64(&j, "interval_us", rd32(&a, REG_INTERVAL_US));
	j_u64(&j, "peer_interval_us", rd32(&b, REG_INTERVAL_US));
	j_u64(&j, "first_seq", base.first);
	j_u64(&j, "p2p_ctrl", rd32(&a, REG_P2P_CTRL));
	j_u64(&j, "peer_p2p_ctrl", rd32(&b, REG_P2P_CTRL));
	j_u64(&j, "status", st);
	j_u64(&j, "peer_status", rd32(&b, REG_STATUS));
	j_end(&j);
}

/*
 * After TX is off, let the receiver's scan catch up: until it has counted
 * everything sent since p2p-start, or its count stood still for two of its
 * periods, or 5 s passed.  A period is rounded up to 10 ms (a host jiffy at
 * HZ=100) and the quiet wait is at least 250 ms: the guest cannot see how
 * late the host runs the scan, and leaving too early would report writes
 * as lost.  The wait is that long only when something is missing.
 */
static const char *wait_rx_settled(const struct qdev *a, const struct qdev *b,
				   const struct p2p_base *base)
{
	uint32_t iv = rd32(b, REG_INTERVAL_US), last = rd32(b, REG_P2P_RECEIVED);
	int64_t quiet = 2LL * (iv > 10000 ? iv : 10000) * 1000;
	int64_t start = now_ns(), changed = start;

	if (quiet < 250000000LL)
		quiet = 250000000LL;

	for (;;) {
		uint32_t sent = rd32(a, REG_P2P_SENT), received = rd32(b, REG_P2P_RECEIVED);
		int64_t now = now_ns();

		if (received - base->received0 == sent - base->sent0)
			return "caught_up";
		if (received != last) {
			last = received;
			changed = now;
		} else if (now - changed >= quiet) {
			return "quiet";
		}
		if (now - start > SETTLE_TIMEOUT_NS)
			return "timeout";
		sleep_us(1000);
	}
}

static void cmd_p2p_verify(const struct options *o)
{
	struct view v = { .kind = KIND_P2P };
	const char *settled = NULL;
	uint32_t sent, received;
	struct p2p_base base;
	struct qdev a, b;
	struct json j;
	uint64_t target;
	int64_t lost_in_flight;
	bool ok;

	dev_open(&a, o->bdf, "bdf", true, false);
	dev_open(&b, o->peer, "peer", true, true);
	p2p_load(a.bdf, b.bdf, &base);
	target = rd64(&a, REG_P2P_TARGET);
	if (target != b.bar2_pa + RX_OFF)
		die("%s: P2P_TARGET 0x%" PRIx64 " is not %s's window 0x%" PRIx64,
		    a.bdf, target, b.bdf, b.bar2_pa + RX_OFF);
	if (o->stop) {
		wr32(&a, REG_P2P_CTRL, rd32(&a, REG_P2P_CTRL) & ~P2P_TX);
		settled = wait_rx_settled(&a, &b, &base);
	}
	v.nslots = rd32(&a, REG_P2P_SLOTS);
	if (v.nslots < 1 || v.nslots > RX_SLOTS)
		die("%s: P2P_SLOTS is %u", a.bdf, v.nslots);
	v.src = (uint16_t)rd32(&a, REG_TAG);
	v.first = base.first;
	v.next1 = rd64(&a, REG_P2P_SEQ);
	v.rec = copy_slots(&b, NULL, v.nslots);
	v.next2 = rd64(&a, REG_P2P_SEQ);
	classify(&v);
	sent = rd32(&a, REG_P2P_SENT);
	received = rd32(&b, REG_P2P_RECEIVED);
	lost_in_flight = (int64_t)(sent - base.sent0) - (int64_t)(received - base.received0);
	/* Without --stop, records may be on their way: the counts are not judged. */
	ok = view_clean(&v) && !v.quiesced && (!o->stop || lost_in_flight == 0);

	j_begin(&j);
	j_str(&j, "bdf", a.bdf);
	j_str(&j, "peer", b.bdf);
	j_hex(&j, "target", target);
	j_u64(&j, "next_seq", v.next2);
	j_u64(&j, "first_seq", base.first);
	j_u64(&j, "sent", sent);
	j_u64(&j, "received", received);
	j_u64(&j, "errors", rd32(&a, REG_P2P_ERRORS));
	j_u64(&j, "last_path", rd32(&a, REG_P2P_LAST_PATH));
	j_u64(&j, "rx_last", rd64(&b, REG_P2P_RX_LAST));
	j_i64(&j, "lost_in_flight", lost_in_flight);
	if (settled)
		j_str(&j, "rx_settle", settled);
	j_u64(&j, "tag", v.src);
	j_view(&j, &v);
	j_u64(&j, "quiesced", v.quiesced);
	j_list(&j, "quiesced_seqs", &v.quiesced_seqs);
	j_u64(&j, "status", rd32(&a, REG_STATUS));
	j_u64(&j, "peer_status", rd32(&b, REG_STATUS));
	j_bool(&j, "ok_all", ok);
	j_end(&j);
}

static void cmd_stop(const struct options *o)
{
	uint32_t cont, p2p;
	struct qdev d;
	struct json j;

	dev_open(&d, o->bdf, "bdf", false, false);
	cont = rd32(&d, REG_CONT_CTRL);
	p2p = rd32(&d, REG_P2P_CTRL);
	wr32(&d, REG_CONT_CTRL, 0);
	if (p2p & P2P_TX)
		wr32(&d, REG_P2P_CTRL, p2p & ~P2P_TX);
	j_begin(&j);
	j_str(&j, "bdf", d.bdf);
	j_bool(&j, "cont_was_on", cont & CONT_EN);
	j_bool(&j, "p2p_tx_was_on", p2p & P2P_TX);
	j_u64(&j, "status", rd32(&d, REG_STATUS));
	j_end(&j);
}

/* ---------------------------------------------------------------- selftest */

/*
 * Host-side checks without a device (qmigdev_records.h's records_selftest).
 * sample_record lets an outside zlib confirm the CRC of a real record.
 */
static void cmd_selftest(const struct options *o)
{
	struct selftest_failure f;
	struct record r;
	uint64_t p1[1];
	struct json j;

	(void)o;
	if (!records_selftest(&f))
		die("selftest: %s is %" PRIu64 ", expected %" PRIu64, f.what, f.got, f.wanted);
	fill_pattern(p1, 1, 0x51ad);
	build_record(&r, KIND_P2P, 0x1234, 0x0102030405060708ULL, 7, 2);
	j_begin(&j);
	j_hex(&j, "crc_check", crc32_buf("123456789", 9));
	j_key(&j, "sample_record");
	fputc('"', j.f);
	for (int i = 0; i < REC_SIZE; i++)
		fprintf(j.f, "%02x", ((const uint8_t *)&r)[i]);
	fputc('"', j.f);
	j_hex(&j, "sample_crc", r.crc);
	j_hex(&j, "pattern_0x51ad_word0", p1[0]);
	j_bool(&j, "ok_all", true);
	j_end(&j);
}

/* ---------------------------------------------------------------- main */

/* parse_long() limited to min..max. */
static long parse_ranged(const char *name, const char *arg, long min, long max)
{
	long v = parse_long(name, arg);

	if (v < min || v > max)
		die("invalid value for --%s: '%s' (%ld..%ld)", name, arg, min, max);
	return v;
}

static void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "bdf", required_argument, NULL, 'b' },
		{ "peer", required_argument, NULL, 'p' },
		{ "ring-kb", required_argument, NULL, 'r' },
		{ "interval-us", required_argument, NULL, 'i' },
		{ "slots", required_argument, NULL, 'n' },
		{ "path", required_argument, NULL, 'a' },
		{ "seed", required_argument, NULL, 's' },
		{ "stop", no_argument, NULL, 'S' },
		{ 0 }
	};
	char *end;
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'b': o->bdf = optarg; break;
		case 'p': o->peer = optarg; break;
		case 'r': o->ring_kb = parse_ranged("ring-kb", optarg, 1, HUGE_SIZE / 1024); break;
		case 'i':
			o->interval_us = parse_ranged("interval-us", optarg,
						    INTERVAL_MIN_US, INTERVAL_MAX_US);
			break;
		case 'n': o->slots = parse_ranged("slots", optarg, 1, RX_SLOTS); break;
		case 'a':
			o->path = -1;
			for (long i = 0; i < 3; i++)
				if (!strcmp(optarg, path_names[i]))
					o->path = i;
			if (o->path < 0)
				die("invalid --path '%s' (auto|vfio|direct)", optarg);
			break;
		case 's':
			errno = 0;
			o->seed = strtoull(optarg, &end, 0);
			if (errno || end == optarg || *end || optarg[0] == '-')
				die("invalid value for --seed: '%s'", optarg);
			o->has_seed = true;
			break;
		case 'S': o->stop = true; break;
		default: die("unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc)
		die("unexpected argument '%s'", argv[optind]);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(const struct options *);
		bool p2p;	/* takes the P2P defaults */
	} commands[] = {
		{ "list", cmd_list, false }, { "status", cmd_status, false },
		{ "dma-start", cmd_dma_start, false },
		{ "dma-verify", cmd_dma_verify, false },
		{ "mem-fill", cmd_mem_fill, false }, { "mem-check", cmd_mem_check, false },
		{ "p2p-start", cmd_p2p_start, true },
		{ "p2p-verify", cmd_p2p_verify, true },
		{ "stop", cmd_stop, false }, { "selftest", cmd_selftest, false },
	};
	struct options o = {
		.ring_kb = HUGE_SIZE / 1024, .interval_us = -1, .slots = RX_SLOTS,
		.path = 1,
	};

	if (argc < 2)
		die("usage: qmp-mig-qmigdev list|status|dma-start|dma-verify|mem-fill|"
		    "mem-check|p2p-start|p2p-verify|stop [options]");
	parse_options(argc - 1, argv + 1, &o);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[1], commands[i].name) == 0) {
			if (o.interval_us < 0)
				o.interval_us = commands[i].p2p ? 20000 : 10000;
			commands[i].run(&o);
			return 0;
		}
	}
	die("unknown command '%s' (list|status|dma-start|dma-verify|mem-fill|"
	    "mem-check|p2p-start|p2p-verify|stop)", argv[1]);
}
