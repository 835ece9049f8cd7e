// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qmp-mig-edu: drives QEMU's educational PCI device "edu" (PCI 1234:11e8)
 * from user space inside the guest, with no kernel driver bound: BAR0
 * through an mmap of sysfs resource0, config space through the sysfs config
 * file.  "start" sets two registers and leaves a writer that keeps the
 * device's DMA engine busy across a live migration; "verify" checks, after
 * it, that no record, register value or buffer byte was lost.  One line of
 * JSON out.
 *
 *   list
 *   start    --bdf B [--seed S] [--slots N (1..64)] [--interval-us U]
 *   status   --bdf B
 *   verify   --bdf B [--stop]
 *   stop     --bdf B
 *   selftest (no device: checks the CRC-32 and the slot classifier)
 *
 * The writer builds record seq = 1, 2, ... in slot (seq-1) % N of ring A,
 * sets "issued", has the device copy it into its buffer at chunk
 * (seq-1) % 32 and from there into the same slot of ring B, and sets
 * "done".  The buffer's other 32 chunks get resident records once, at
 * start, and are never written again: what the device holds there after a
 * migration is what the migration carried (the writer's chunks are
 * rewritten within seconds, which would hide a buffer that did not travel).  A record is 64 bytes: magic "EREC", slot (u32), seq (u64), the
 * writer's CLOCK_REALTIME ns (u64), fill[i] = (u8)(seq + i) (36 bytes), and
 * the zlib CRC-32 of bytes 0..59 at offset 60.
 *
 * verify gives every slot of B (due: the newest seq <= done that goes
 * there) and of A (against issued) one class: empty (zero, nothing due), ok
 * (the due record, or the one in flight: the counter lags the memory), lost
 * (due record missing: zero or an older one), torn (non-zero, bad magic, CRC
 * or fill), future (beyond the one in flight), foreign (a whole record in
 * the wrong slot).  Once no writer runs, it also copies the device's buffer
 * out and compares each chunk with the record this run put there last (the
 * resident chunks: with the copy kept in the state page).
 * dma_timeouts counts transfers (the writer's and verify's) that never
 * ended.  Output: 64-bit addresses as "0x..." strings, everything else as
 * numbers; lists hold the first 16 entries.
 *
 * State: one 2 MiB hugetlbfs page kept as the file
 * /dev/hugepages/qmp-mig-edu-<bdf> (':' and '.' made '_'): header at 0,
 * ring A at 4 KiB, ring B at 8 KiB, scratch at 12 KiB, the resident
 * records at 16 KiB.  It is contiguous,
 * never swapped and outlives the process, so a later run (after migration)
 * maps the same guest-physical page.  The writer holds an flock on the file
 * while it runs, so a lock that cannot be taken means a live writer.
 *
 * edu facts this relies on (checked against QEMU hw/misc/edu.c):
 *  - BAR0 is 1 MiB of MMIO; registers below 0x80 take 32-bit accesses
 *    only, the DMA registers 32- or 64-bit ones.
 *  - 0x00 reads 0x010000ed; 0x04 reads the complement of the last write.
 *    A write of n to 0x08 (ignored while status bit 0 COMPUTING is set)
 *    computes n! in u32 arithmetic on a thread; COMPUTING then clears.
 *  - Interrupts (status bit 7, DMA command bit 2) are not used; start
 *    clears status bit 7 and acknowledges 0x24 (pending) through 0x64.
 *  - DMA: 0x80 source, 0x88 destination, 0x90 count, 0x98 command (bit 0
 *    RUN, bit 1: 0 RAM -> buffer, 1 buffer -> RAM).  A command runs only
 *    with RUN set, 100 ms (virtual clock) later; then RUN clears.  While
 *    RUN is set all DMA register writes are ignored.  The 4 KiB buffer is
 *    at device address 0x40000, reachable only by DMA.  Addresses are
 *    masked by the dma_mask property (the lab sets 40 bits).
 *  - The host's variant driver (qmigpci) migrates registers and buffer, but
 *    restores the factorial only to n! mod 2^32 for n <= 33: start uses
 *    n = 10 + seed % 12.
 * Guest facts: no IOMMU in the guest, so the DMA address is the
 * guest-physical one from /proc/self/pagemap; x86_64, so records are read
 * in place as little-endian structs.
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
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define SYS_PCI "/sys/bus/pci/devices"
#define CFG_COMMAND 0x04
#define CMD_MEM_MASTER 0x0006		/* memory decode | bus master */
#define BAR0_BYTES (1L << 20)
#define REGS_BYTES 4096			/* every register is in the first page */

/* The edu's registers, the records and the slot classifier, shared with the micro guest's agent. */
#include "edu_records.h"

#define HP_BYTES (2UL << 20)
#define HP_MOUNT "/dev/hugepages"
#define HP_POOL "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
#define HUGETLBFS_MAGIC 0x958458f6
#define STATE_MAGIC 0x53554445		/* "EDUS" */
#define OFF_A 0x1000
#define OFF_B 0x2000
#define OFF_SCRATCH 0x3000
#define OFF_RESIDENT 0x4000

/* The state page's header; counters and flags only through LOAD/STORE. */
struct hdr {
	uint32_t magic, slots;
	int32_t pid;
	uint32_t stop, stopped;
	uint32_t liveness_written, liveness_expected;
	uint32_t fact_n, fact_expected;
	uint64_t seed, gpa, interval_us;
	uint64_t issued, done, dma_timeouts;
	char bdf[32];
};

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

#define NS 1000000000LL
#define POLL_US 5000
#define DMA_POLL_US 200
#define DMA_TIMEOUT_NS (10 * NS)
#define FACT_TIMEOUT_NS (10 * NS)
#define STOP_TIMEOUT_NS (30 * NS)
#define FIRST_TIMEOUT_NS (25 * NS)
#define INTERVAL_MAX_US 10000000L

struct options {
	const char *bdf;
	uint64_t seed;
	bool has_seed;
	long slots;
	long interval_us;
	bool stop;
};

struct edu {
	const char *bdf;
	volatile uint8_t *regs;
};

struct state {
	int fd;			/* the writer's flock lives on this file */
	struct hdr *h;
	struct rec *a, *b;
	uint8_t *scratch;
	uint64_t gpa;		/* where this mapping is, now */
};

/* ---------------------------------------------------------------- output */

/* The reply is collected here and printed at once, so a die() still gives one line. */
static char reply[8192];
static size_t reply_len;

static void __attribute__((format(printf, 1, 2))) out(const char *fmt, ...)
{
	size_t room = sizeof(reply) - reply_len;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(reply + reply_len, room, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= room)
		die("reply longer than %zu bytes", sizeof(reply));
	reply_len += (size_t)n;
}

static void out_list(const char *key, const struct list *l)
{
	out(",\"%s\":[", key);
	for (unsigned i = 0; i < l->len; i++)
		out(i ? ",%" PRIu64 : "%" PRIu64, l->v[i]);
	out("]");
}

static void send_reply(void)
{
	printf("%s}\n", reply);
}

/* ---------------------------------------------------------------- helpers */

static int64_t clock_ns(clockid_t clk)
{
	struct timespec t;

	clock_gettime(clk, &t);
	return t.tv_sec * NS + t.tv_nsec;
}

static void nap_us(uint64_t us)
{
	struct timespec t = { .tv_sec = us / 1000000, .tv_nsec = us % 1000000 * 1000 };

	nanosleep(&t, NULL);
}

/* ---------------------------------------------------------------- device */

static uint64_t rd(const struct edu *e, unsigned off, int width)
{
	const volatile void *p = e->regs + off;
	uint64_t v;

	__asm__ __volatile__("" ::: "memory");
	v = width == 8 ? *(const volatile uint64_t *)p : *(const volatile uint32_t *)p;
	__asm__ __volatile__("" ::: "memory");
	return v;
}

static void wr(const struct edu *e, unsigned off, int width, uint64_t v)
{
	volatile void *p = e->regs + off;

	__asm__ __volatile__("" ::: "memory");
	if (width == 8)
		*(volatile uint64_t *)p = v;
	else
		*(volatile uint32_t *)p = (uint32_t)v;
	__asm__ __volatile__("" ::: "memory");
}

/* Poll until the bits in mask read 0; false after timeout_ns. */
static bool wait_clear_every(const struct edu *e, unsigned off, int width, uint64_t mask,
			     int64_t timeout_ns, long poll_us)
{
	int64_t deadline = clock_ns(CLOCK_MONOTONIC) + timeout_ns;

	while (rd(e, off, width) & mask) {
		if (clock_ns(CLOCK_MONOTONIC) > deadline)
			return false;
		nap_us(poll_us);
	}
	return true;
}

static bool wait_clear(const struct edu *e, unsigned off, int width,
		       uint64_t mask, int64_t timeout_ns)
{
	return wait_clear_every(e, off, width, mask, timeout_ns, POLL_US);
}

/*
 * One transfer of len bytes, waited for.  The fences order the CPU's
 * writes to RAM before the start, and the device's after the end, against
 * the plain accesses around.  False if RUN never cleared.
 */
static bool edu_dma(const struct edu *e, uint64_t src, uint64_t dst,
		    uint64_t dir, uint64_t len)
{
	if (!wait_clear(e, EDU_DMA_CMD, 8, EDU_RUN, DMA_TIMEOUT_NS))
		return false;
	wr(e, EDU_DMA_SRC, 8, src);
	wr(e, EDU_DMA_DST, 8, dst);
	wr(e, EDU_DMA_CNT, 8, len);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	wr(e, EDU_DMA_CMD, 8, dir | EDU_RUN);
	/* Polled often: the engine idles from the end of a transfer until the writer
	 * sees it, and a migration should find a transfer in flight most of the time. */
	if (!wait_clear_every(e, EDU_DMA_CMD, 8, EDU_RUN, DMA_TIMEOUT_NS, DMA_POLL_US))
		return false;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return true;
}

static int config_open(const char *bdf, int flags)
{
	char path[128];

	snprintf(path, sizeof(path), SYS_PCI "/%s/config", bdf);
	return open(path, flags | O_CLOEXEC);
}

static bool is_edu(const char *bdf)
{
	uint16_t id[2] = { 0, 0 };
	int fd = config_open(bdf, O_RDONLY);
	bool yes = fd >= 0 && pread(fd, id, sizeof(id), 0) == sizeof(id) &&
		   id[0] == EDU_VENDOR && id[1] == EDU_DEVICE;

	if (fd >= 0)
		close(fd);
	return yes;
}

static void check_bdf(const char *bdf)
{
	if (!bdf)
		die("missing --bdf (see 'list')");
	if (!*bdf || bdf[0] == '.' || strlen(bdf) >= sizeof(((struct hdr *)0)->bdf) ||
	    strpbrk(bdf, "/\"\\"))
		die("invalid --bdf '%s'", bdf);
	if (!is_edu(bdf))
		die("%s is not an edu function (%04x:%04x)", bdf, EDU_VENDOR, EDU_DEVICE);
}

/* Memory decode and bus mastering on, through config space. */
static void enable_mem_master(const char *bdf)
{
	int fd = config_open(bdf, O_RDWR);
	uint16_t cmd = 0;
	bool ok;

	if (fd < 0)
		die("%s: cannot open config space: %s (needs root)", bdf, strerror(errno));
	ok = pread(fd, &cmd, 2, CFG_COMMAND) == 2;
	if (ok && (cmd & CMD_MEM_MASTER) != CMD_MEM_MASTER) {
		cmd |= CMD_MEM_MASTER;
		ok = pwrite(fd, &cmd, 2, CFG_COMMAND) == 2 &&
		     pread(fd, &cmd, 2, CFG_COMMAND) == 2;
	}
	if (!ok)
		die("%s: COMMAND register access failed: %s", bdf, strerror(errno));
	close(fd);
	if ((cmd & CMD_MEM_MASTER) != CMD_MEM_MASTER)
		die("%s: COMMAND is 0x%04x after setting MEM and MASTER", bdf, cmd);
}

static void edu_open(struct edu *e, const char *bdf)
{
	char path[128];
	struct stat st;
	uint32_t id;
	void *p;
	int fd;

	check_bdf(bdf);
	enable_mem_master(bdf);
	snprintf(path, sizeof(path), SYS_PCI "/%s/resource0", bdf);
	fd = open(path, O_RDWR | O_SYNC | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) != 0)
		die("%s: cannot open %s: %s", bdf, path, strerror(errno));
	if (st.st_size < BAR0_BYTES)
		die("%s: BAR0 is %lld bytes, not 1 MiB", bdf, (long long)st.st_size);
	p = mmap(NULL, REGS_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		die("%s: cannot mmap %s: %s", bdf, path, strerror(errno));
	close(fd);
	e->bdf = bdf;
	e->regs = p;
	id = (uint32_t)rd(e, EDU_ID, 4);
	if (id != EDU_ID_VALUE)
		die("%s: ID reads 0x%08x, not 0x%08x", bdf, id, EDU_ID_VALUE);
}

/* ---------------------------------------------------------------- state page */

static void hugetlbfs_ready(void)
{
	struct statfs fs;

	if (statfs(HP_MOUNT, &fs) != 0 || fs.f_type != HUGETLBFS_MAGIC) {
		mkdir(HP_MOUNT, 0755);
		if (mount("hugetlbfs", HP_MOUNT, "hugetlbfs", 0, "pagesize=2M") != 0 ||
		    statfs(HP_MOUNT, &fs) != 0)
			die("cannot mount hugetlbfs on " HP_MOUNT ": %s", strerror(errno));
	}
	if ((unsigned long)fs.f_bsize != HP_BYTES)
		die(HP_MOUNT " has %ld-byte pages, not 2 MiB", (long)fs.f_bsize);
}

/* One more page in the pool (a fragmented guest may not find one). */
static void grow_pool(void)
{
	FILE *f = fopen(HP_POOL, "r+");
	long pages;

	if (!f || fscanf(f, "%ld", &pages) != 1)
		die("cannot read " HP_POOL ": %s", strerror(errno));
	rewind(f);
	if (fprintf(f, "%ld\n", pages + 1) < 0 || fclose(f) != 0)
		die("cannot grow " HP_POOL " to %ld: %s", pages + 1, strerror(errno));
}

static uint64_t gpa_of(const void *va)
{
	uint64_t entry = 0, pfn;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0 || pread(fd, &entry, 8, (off_t)((uintptr_t)va / 4096 * 8)) != 8)
		die("cannot read /proc/self/pagemap: %s", strerror(errno));
	close(fd);
	pfn = entry & ((1ULL << 55) - 1);
	if (!(entry >> 63) || !pfn)
		die("pagemap has no frame for %p (not present, or not root)", va);
	return pfn << 12 | (uintptr_t)va % 4096;
}

/*
 * Map the bdf's state page.  Without 'create', a missing file or one that
 * no start completed is an error if 'must', else a false return.
 */
static bool state_map(struct state *s, const char *bdf, bool create, bool must)
{
	char path[128];
	uint8_t *p = MAP_FAILED;
	int fd;

	hugetlbfs_ready();
	snprintf(path, sizeof(path), HP_MOUNT "/qmp-mig-edu-%s", bdf);
	for (char *c = path + sizeof(HP_MOUNT); *c; c++)
		*c = *c == ':' || *c == '.' ? '_' : *c;
	fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (fd < 0 && errno == ENOENT && !must)
		return false;
	if (fd < 0)
		die("cannot open %s: %s%s", path, strerror(errno),
		    errno == ENOENT ? " (run start first)" : "");
	if (create && ftruncate(fd, HP_BYTES) != 0)
		die("cannot size %s: %s", path, strerror(errno));
	for (int tries = 0; tries < 2 && p == MAP_FAILED; tries++) {
		p = mmap(NULL, HP_BYTES, PROT_READ | PROT_WRITE,
			 MAP_SHARED | MAP_POPULATE, fd, 0);
		if (p == MAP_FAILED && errno == ENOMEM && create && !tries)
			grow_pool();
	}
	if (p == MAP_FAILED)
		die("cannot map %s: %s (no free 2 MiB page? reserve with hugepages=N)",
		    path, strerror(errno));
	*(volatile uint8_t *)p;
	s->fd = fd;
	s->h = (struct hdr *)p;
	s->a = (struct rec *)(p + OFF_A);
	s->b = (struct rec *)(p + OFF_B);
	s->scratch = p + OFF_SCRATCH;
	s->gpa = gpa_of(p);
	if (s->gpa % HP_BYTES)
		die("%s is at gpa 0x%" PRIx64 ", not on a 2 MiB page", path, s->gpa);
	if (create || (s->h->magic == STATE_MAGIC && !strcmp(s->h->bdf, bdf) &&
		       s->h->slots >= 1 && s->h->slots <= MAX_SLOTS))
		return true;
	if (must)
		die("%s holds no state of a start on %s", path, bdf);
	munmap(p, HP_BYTES);
	close(fd);
	return false;
}

/* The writer runs while it holds its lock and has not said it stopped. */
static bool writer_alive(const struct state *s)
{
	if (LOAD(s->h->stopped))
		return false;
	if (flock(s->fd, LOCK_SH | LOCK_NB) == 0) {
		flock(s->fd, LOCK_UN);
		return false;
	}
	if (errno != EWOULDBLOCK)
		die("flock on the state file: %s", strerror(errno));
	return true;
}

/* Ask the writer to stop after its current record; true if it was running. */
static bool stop_writer(const char *bdf, struct state *s)
{
	int64_t deadline = clock_ns(CLOCK_MONOTONIC) + STOP_TIMEOUT_NS;
	bool was = writer_alive(s);

	STORE(s->h->stop, 1);
	while (writer_alive(s)) {
		if (clock_ns(CLOCK_MONOTONIC) > deadline)
			die("%s: writer pid %d did not stop within 30 s (issued %" PRIu64
			    ", done %" PRIu64 ")", bdf, (int)LOAD(s->h->pid),
			    LOAD(s->h->issued), LOAD(s->h->done));
		nap_us(POLL_US);
	}
	return was;
}

/* ---------------------------------------------------------------- writer */

static void idle_between(const struct hdr *h, uint64_t us)
{
	while (us && !LOAD(h->stop)) {
		uint64_t step = us < 10000 ? us : 10000;

		nap_us(step);
		us -= step;
	}
}

static void __attribute__((noreturn)) writer(const struct edu *e, struct state *s)
{
	struct hdr *h = s->h;
	int null = open("/dev/null", O_RDWR);

	setsid();
	for (int fd = 0; fd < 3 && null >= 0; fd++)
		dup2(null, fd);
	STORE(h->pid, (int32_t)getpid());
	for (uint64_t seq = 1; !LOAD(h->stop); seq++) {
		uint32_t k = (uint32_t)((seq - 1) % h->slots);
		uint64_t chunk = EDU_BUF + (seq - 1) % WRITER_CHUNKS * REC_SIZE;
		uint64_t a = s->gpa + OFF_A + k * REC_SIZE, b = s->gpa + OFF_B + k * REC_SIZE;
		struct rec r;

		rec_build(&r, seq, k, (uint64_t)clock_ns(CLOCK_REALTIME));
		memcpy(&s->a[k], &r, sizeof(r));
		STORE(h->issued, seq);
		if (!edu_dma(e, a, chunk, 0, REC_SIZE) ||
		    !edu_dma(e, chunk, b, EDU_TO_RAM, REC_SIZE)) {
			STORE(h->dma_timeouts, h->dma_timeouts + 1);
			break;
		}
		STORE(h->done, seq);
		idle_between(h, h->interval_us);
	}
	STORE(h->stopped, 1);
	_exit(0);
}

/* ---------------------------------------------------------------- commands */

static void cmd_list(const struct options *o)
{
	struct dirent **ents;
	int n = scandir(SYS_PCI, &ents, NULL, alphasort);
	bool any = false;

	(void)o;
	if (n < 0)
		die("cannot list " SYS_PCI ": %s", strerror(errno));
	out("{\"devices\":[");
	for (int i = 0; i < n; i++) {
		if (ents[i]->d_name[0] != '.' && is_edu(ents[i]->d_name)) {
			out("%s{\"bdf\":\"%s\"}", any ? "," : "", ents[i]->d_name);
			any = true;
		}
		free(ents[i]);
	}
	free(ents);
	out("]");
	send_reply();
}

/* Liveness and factorial from the seed, set and checked before the load starts. */
static void set_registers(const struct edu *e, struct hdr *h, uint64_t seed)
{
	uint32_t got;

	if (rd(e, EDU_STATUS, 4) & EDU_IRQFACT)
		wr(e, EDU_STATUS, 4, 0);
	got = (uint32_t)rd(e, EDU_IRQ_STATUS, 4);
	if (got)
		wr(e, EDU_IRQ_ACK, 4, got);

	h->liveness_written = (uint32_t)((seed + 1) * 0x9e3779b97f4a7c15ULL >> 32);
	h->liveness_expected = ~h->liveness_written;
	wr(e, EDU_LIVENESS, 4, h->liveness_written);
	got = (uint32_t)rd(e, EDU_LIVENESS, 4);
	if (got != h->liveness_expected)
		die("%s: liveness reads 0x%08x after writing 0x%08x", e->bdf, got,
		    h->liveness_written);

	h->fact_n = 10 + (uint32_t)(seed % 12);
	h->fact_expected = fact_u32(h->fact_n);
	if (!wait_clear(e, EDU_STATUS, 4, EDU_COMPUTING, FACT_TIMEOUT_NS))
		die("%s: an earlier factorial is still computing after 10 s", e->bdf);
	wr(e, EDU_FACT, 4, h->fact_n);
	if (!wait_clear(e, EDU_STATUS, 4, EDU_COMPUTING, FACT_TIMEOUT_NS))
		die("%s: factorial of %u still computing after 10 s", e->bdf, h->fact_n);
	got = (uint32_t)rd(e, EDU_FACT, 4);
	if (got != h->fact_expected)
		die("%s: factorial of %u reads %u, not %u", e->bdf, h->fact_n, got,
		    h->fact_expected);
}

/* Until the writer's first record is back in B; dies (stopping it) if it is not. */
static void wait_first_record(const struct edu *e, struct state *s, pid_t child)
{
	int64_t deadline = clock_ns(CLOCK_MONOTONIC) + FIRST_TIMEOUT_NS;
	const char *why = NULL;

	while (!why && !LOAD(s->h->done)) {
		if (LOAD(s->h->stopped))
			why = "the device's DMA did not finish";
		else if (waitpid(child, NULL, WNOHANG) == child)
			why = "the writer died";
		else if (clock_ns(CLOCK_MONOTONIC) > deadline)
			why = "no record after 25 s";
		else
			nap_us(POLL_US);
	}
	/* Only the device writes B, zeroed above: anything there is its copy. */
	if (!why && rec_zero(&s->b[0]))
		why = "the device's copy did not land in guest memory (DMA mask?)";
	if (why) {
		STORE(s->h->stop, 1);
		die("%s: first record (ring at gpa 0x%" PRIx64 "): %s", e->bdf, s->gpa, why);
	}
}

static struct rec *resident(const struct state *s)
{
	return (struct rec *)((uint8_t *)s->h + OFF_RESIDENT);
}

/* The resident records: built in the state page, copied into the buffer's upper half. */
static void put_resident(const struct edu *e, const struct state *s)
{
	uint64_t now = (uint64_t)clock_ns(CLOCK_REALTIME);

	for (uint32_t j = 0; j < CHUNKS - WRITER_CHUNKS; j++)
		rec_build(&resident(s)[j], RESIDENT_SEQ + j, j, now);
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!edu_dma(e, s->gpa + OFF_RESIDENT, EDU_BUF + WRITER_CHUNKS * REC_SIZE, 0,
		     (CHUNKS - WRITER_CHUNKS) * REC_SIZE))
		die("%s: the resident records' transfer into the buffer did not finish", e->bdf);
}

static void cmd_start(const struct options *o)
{
	uint64_t seed = o->has_seed ? o->seed :
			(uint64_t)clock_ns(CLOCK_REALTIME) ^ (uint64_t)getpid() << 32;
	struct state s;
	struct edu e;
	pid_t child;

	edu_open(&e, o->bdf);
	state_map(&s, e.bdf, true, true);
	if (flock(s.fd, LOCK_EX | LOCK_NB) != 0)
		die("%s: %s", e.bdf, errno == EWOULDBLOCK ?
		    "a writer is still running: stop it first" : strerror(errno));
	if (!wait_clear(&e, EDU_DMA_CMD, 8, EDU_RUN, DMA_TIMEOUT_NS))
		die("%s: a DMA transfer in flight did not finish in 10 s", e.bdf);
	memset(s.h, 0, OFF_SCRATCH + EDU_BUF_BYTES);
	set_registers(&e, s.h, seed);
	s.h->slots = (uint32_t)o->slots;
	s.h->seed = seed;
	s.h->gpa = s.gpa;
	s.h->interval_us = (uint64_t)o->interval_us;
	snprintf(s.h->bdf, sizeof(s.h->bdf), "%s", e.bdf);
	STORE(s.h->magic, STATE_MAGIC);
	put_resident(&e, &s);

	fflush(stdout);
	child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0)
		writer(&e, &s);	/* inherits the lock with the file descriptor */
	wait_first_record(&e, &s, child);

	out("{\"bdf\":\"%s\",\"gpa\":\"0x%" PRIx64 "\",\"slots\":%u,\"seed\":%" PRIu64,
	    e.bdf, s.gpa, s.h->slots, seed);
	out(",\"liveness\":%u,\"factorial\":%u,\"factorial_n\":%u", s.h->liveness_expected,
	    s.h->fact_expected, s.h->fact_n);
	out(",\"interval_us\":%ld,\"pid\":%d", o->interval_us, (int)child);
	send_reply();
}

static void cmd_status(const struct options *o)
{
	struct state s;
	struct edu e;

	edu_open(&e, o->bdf);
	out("{\"bdf\":\"%s\",\"id\":%" PRIu64 ",\"liveness\":%" PRIu64, e.bdf,
	    rd(&e, EDU_ID, 4), rd(&e, EDU_LIVENESS, 4));
	out(",\"factorial\":%" PRIu64 ",\"status\":%" PRIu64 ",\"irq_status\":%" PRIu64,
	    rd(&e, EDU_FACT, 4), rd(&e, EDU_STATUS, 4), rd(&e, EDU_IRQ_STATUS, 4));
	out(",\"dma_src\":\"0x%" PRIx64 "\",\"dma_dst\":\"0x%" PRIx64 "\"",
	    rd(&e, EDU_DMA_SRC, 8), rd(&e, EDU_DMA_DST, 8));
	out(",\"dma_cnt\":%" PRIu64 ",\"dma_cmd\":%" PRIu64, rd(&e, EDU_DMA_CNT, 8),
	    rd(&e, EDU_DMA_CMD, 8));
	if (state_map(&s, e.bdf, false, false))
		out(",\"issued\":%" PRIu64 ",\"done\":%" PRIu64 ",\"dma_timeouts\":%" PRIu64
		    ",\"pid\":%d,\"writer_alive\":%s", LOAD(s.h->issued), LOAD(s.h->done),
		    LOAD(s.h->dma_timeouts), (int)LOAD(s.h->pid),
		    writer_alive(&s) ? "true" : "false");
	send_reply();
}

static void cmd_stop(const struct options *o)
{
	struct state s;
	bool was;

	check_bdf(o->bdf);
	state_map(&s, o->bdf, false, true);
	was = stop_writer(o->bdf, &s);
	out("{\"bdf\":\"%s\",\"stopped\":true,\"was_running\":%s,\"done\":%" PRIu64,
	    o->bdf, was ? "true" : "false", LOAD(s.h->done));
	send_reply();
}

/* A copy of n slots; a slot that looks torn may be mid-write: copied again. */
static void ring_copy(struct rec *dst, const struct rec *src, uint32_t n)
{
	memcpy(dst, src, n * sizeof(*dst));
	for (uint32_t k = 0; k < n; k++) {
		if (rec_zero(&dst[k]) || rec_valid(&dst[k]))
			continue;
		nap_us(1000);
		memcpy(&dst[k], &src[k], sizeof(*dst));
	}
}

/*
 * The device's buffer, copied out through scratch, against what this run
 * put in it: writer chunk j holds the newest seq <= issued with
 * (seq-1) % 32 == j; a resident chunk holds its resident record.
 * Not compared: chunks this run never wrote, and the chunk of a record
 * whose transfers did not finish.  A record still in ring A (the CPU's
 * original) must match byte for byte; an older one must be whole, with its
 * seq and slot (B is what is being checked, so it is no reference).
 */
static const char *check_buffer(const struct edu *e, const struct state *s,
				 uint64_t *compared, struct list *bad, uint64_t *nbad)
{
	const struct hdr *h = s->h;
	uint64_t issued = LOAD(h->issued), done = LOAD(h->done);

	memset(s->scratch, 0xa5, EDU_BUF_BYTES);
	if (!edu_dma(e, EDU_BUF, s->gpa + OFF_SCRATCH, EDU_TO_RAM, EDU_BUF_BYTES))
		return "timeout";
	for (uint32_t j = WRITER_CHUNKS; j < CHUNKS; j++) {
		++*compared;
		if (memcmp(s->scratch + j * REC_SIZE, &resident(s)[j - WRITER_CHUNKS], REC_SIZE)) {
			++*nbad;
			list_add(bad, j);
		}
	}
	for (uint32_t j = 0; j < WRITER_CHUNKS; j++) {
		const struct rec *got = (const struct rec *)(s->scratch + j * REC_SIZE);
		uint64_t seq = due_seq(issued, WRITER_CHUNKS, j);
		uint32_t k;
		bool same;

		if (!seq || (seq == issued && issued > done))
			continue;
		k = (uint32_t)((seq - 1) % h->slots);
		if (s->a[k].seq == seq && rec_valid(&s->a[k]))
			same = !memcmp(got, &s->a[k], REC_SIZE);
		else
			same = rec_valid(got) && got->seq == seq && got->slot == k;
		++*compared;
		if (!same) {
			++*nbad;
			list_add(bad, j);
		}
	}
	return "ok";
}

static void out_tally(const struct tally *t)
{
	for (int c = 0; c < K_N; c++)
		out(",\"%s\":%" PRIu64, kind_names[c], t->n[c]);
}

static void cmd_verify(const struct options *o)
{
	struct rec a[MAX_SLOTS], b[MAX_SLOTS];
	struct tally ta = { 0 }, tb = { 0 };
	uint64_t issued0, done0, issued, done, compared = 0, nbad = 0, timeouts;
	uint32_t live, fact, n;
	const char *buf_read = "skipped";
	struct list chunks = { 0 };
	struct state s;
	struct edu e;
	bool alive, clean;

	edu_open(&e, o->bdf);
	state_map(&s, e.bdf, false, true);
	if (o->stop)
		stop_writer(e.bdf, &s);
	alive = writer_alive(&s);
	n = s.h->slots;

	issued0 = LOAD(s.h->issued);
	done0 = LOAD(s.h->done);
	ring_copy(b, s.b, n);
	ring_copy(a, s.a, n);
	issued = LOAD(s.h->issued);
	done = LOAD(s.h->done);
	scan(b, n, done0, done, &tb);
	scan(a, n, issued0, issued, &ta);

	live = (uint32_t)rd(&e, EDU_LIVENESS, 4);
	if (!wait_clear(&e, EDU_STATUS, 4, EDU_COMPUTING, FACT_TIMEOUT_NS))
		die("%s: factorial still computing after 10 s", e.bdf);
	fact = (uint32_t)rd(&e, EDU_FACT, 4);
	timeouts = LOAD(s.h->dma_timeouts);
	/* The engine is the writer's while it runs. */
	if (!alive)
		buf_read = check_buffer(&e, &s, &compared, &chunks, &nbad);
	timeouts += !strcmp(buf_read, "timeout");

	out("{\"bdf\":\"%s\",\"gpa\":\"0x%" PRIx64 "\",\"gpa_stable\":%s", e.bdf,
	    s.h->gpa, s.h->gpa == s.gpa ? "true" : "false");
	out(",\"issued\":%" PRIu64 ",\"done\":%" PRIu64 ",\"slots\":%u", issued, done, n);
	out_tally(&tb);
	out_list("lost_seqs", &tb.lost_seqs);
	out_list("torn_slots", &tb.torn_slots);
	out_list("future_seqs", &tb.future_seqs);
	out(",\"source\":{\"slots\":%u", n);
	out_tally(&ta);
	out_list("lost_seqs", &ta.lost_seqs);
	out_list("torn_slots", &ta.torn_slots);
	out("},\"liveness\":{\"expected\":%u,\"read\":%u}", s.h->liveness_expected, live);
	out(",\"factorial\":{\"n\":%u,\"expected\":%u,\"read\":%u}", s.h->fact_n,
	    s.h->fact_expected, fact);
	out(",\"buffer\":{\"read\":\"%s\",\"compared\":%" PRIu64 ",\"mismatched\":%" PRIu64,
	    buf_read, compared, nbad);
	out_list("chunks", &chunks);
	clean = done && !tb.n[K_LOST] && !tb.n[K_TORN] && !tb.n[K_FUTURE] &&
		!tb.n[K_FOREIGN] && !ta.n[K_LOST] && !ta.n[K_TORN] && !ta.n[K_FUTURE] &&
		!ta.n[K_FOREIGN] && live == s.h->liveness_expected &&
		fact == s.h->fact_expected && !nbad && !timeouts;
	out("},\"dma_timeouts\":%" PRIu64 ",\"writer_alive\":%s,\"pid\":%d,\"seed\":%" PRIu64
	    ",\"ok_all\":%s", timeouts, alive ? "true" : "false", (int)s.h->pid,
	    s.h->seed, clean ? "true" : "false");
	send_reply();
}

/* ---------------------------------------------------------------- selftest */

/* edu_records.h's checks: CRC-32, factorial and the slot classifier, no device needed. */
static void cmd_selftest(const struct options *o)
{
	const char *why;

	(void)o;
	if (!edu_selftest(&why))
		die("selftest: %s", why);
	out("{\"selftest\":\"ok\"");
	send_reply();
}

/* ---------------------------------------------------------------- main */

static void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
		{ "bdf", required_argument, NULL, 'b' },
		{ "seed", required_argument, NULL, 's' },
		{ "slots", required_argument, NULL, 'n' },
		{ "interval-us", required_argument, NULL, 'i' },
		{ "stop", no_argument, NULL, 'S' },
		{ 0 }
	};
	char *end;
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == 'b') {
			o->bdf = optarg;
		} else if (c == 's') {
			errno = 0;
			o->seed = strtoull(optarg, &end, 0);
			if (errno || end == optarg || *end || *optarg == '-')
				die("invalid value for --seed: '%s'", optarg);
			o->has_seed = true;
		} else if (c == 'n') {
			o->slots = parse_long("slots", optarg);
			if (o->slots < 1 || o->slots > MAX_SLOTS)
				die("--slots must be 1..%d", MAX_SLOTS);
		} else if (c == 'i') {
			o->interval_us = parse_long("interval-us", optarg);
			if (o->interval_us < 0 || o->interval_us > INTERVAL_MAX_US)
				die("--interval-us must be 0..%ld", INTERVAL_MAX_US);
		} else if (c == 'S') {
			o->stop = true;
		} else {
			die("unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (optind < argc)
		die("unexpected argument '%s'", argv[optind]);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(const struct options *);
	} cmds[] = {
		{ "list", cmd_list }, { "start", cmd_start }, { "status", cmd_status },
		{ "verify", cmd_verify }, { "stop", cmd_stop },
		{ "selftest", cmd_selftest },
	};
	struct options o = { .slots = MAX_SLOTS };

	if (argc < 2)
		die("usage: qmp-mig-edu list|start|status|verify|stop|selftest [options]");
	parse_options(argc - 1, argv + 1, &o);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		if (!strcmp(argv[1], cmds[i].name)) {
			cmds[i].run(&o);
			return 0;
		}
	}
	die("unknown command '%s' (list|start|status|verify|stop|selftest)", argv[1]);
}
