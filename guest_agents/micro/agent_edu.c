// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * edu on the micro guest: guest_agents/edu.c's commands, records, slot classes
 * and answers for QEMU's educational device (1234:11e8), with config space by
 * port I/O and BAR0 at its physical address.  The record layout, the writer's
 * loop, the verdicts and the edu facts it relies on are described in edu.c.
 *
 *   list | status --bdf B | stop --bdf B | selftest
 *   start  --bdf B [--seed S] [--slots N (1..64)] [--interval-us U]
 *   verify --bdf B [--stop]
 *
 * Where the Linux agent keeps a function's state in a 2 MiB hugetlbfs file and
 * runs its writer as a process, this one keeps the same layout (header, rings A
 * and B, scratch, resident records) in the few pages of guest RAM it needs, found
 * through a table entry per function, and runs the writer's loop as steps of the
 * main loop's ticks: a step never waits, it polls the DMA RUN bit at the next
 * tick.  Table and pages migrate with the guest.  There is no process: "pid" is 1
 * once a writer was started, and a live writer is a flag in the table.  A record's
 * time is the HPET's (there is no wall clock).  While a command runs the main loop
 * does not tick, so a command that waits keeps the writers going itself.
 */
#include "micro.h"

#define EDU_VENDOR 0x1234
#define EDU_DEVICE 0x11e8
#define BAR0_BYTES MIB
#define CMD_MEM_MASTER 0x0006		/* memory decode | bus master */
#define MAX_FUNCTIONS 8			/* functions with state */
#define MAX_LISTED 32
#define PID 1

/* The edu's registers, the records and the slot classifier, shared with the Linux agent. */
#include "../edu_records.h"

/* The state area: edu.c's layout, up to the end of the resident records. */
#define STATE_MAGIC 0x53554445		/* "EDUS" */
#define OFF_A 0x1000
#define OFF_B 0x2000
#define OFF_SCRATCH 0x3000
#define OFF_RESIDENT 0x4000
#define AREA_PAGES 5
_Static_assert(OFF_RESIDENT + (CHUNKS - WRITER_CHUNKS) * REC_SIZE <= AREA_PAGES * PAGE_SIZE,
	       "state area");

struct hdr {
	uint32_t magic, slots;
	int32_t pid;
	uint32_t stop, stopped;
	uint32_t liveness_written, liveness_expected;
	uint32_t fact_n, fact_expected;
	uint64_t seed, gpa, interval_us;
	uint64_t issued, done, dma_timeouts;
	char bdf[16];
};

#define NS 1000000000ULL
#define DMA_TIMEOUT_NS (10 * NS)
#define FACT_TIMEOUT_NS (10 * NS)
#define STOP_TIMEOUT_NS (30 * NS)
#define FIRST_TIMEOUT_NS (25 * NS)
#define INTERVAL_MAX_US 10000000L

/* Where the writer's loop is: before a record, in one of its transfers, pausing after it. */
enum step { W_NEXT, W_DMA, W_PAUSE };

static struct function {
	char bdf[16];			/* "" = free entry */
	uint64_t bar0;			/* sized once, at first sight */
	uint8_t *area;			/* AREA_PAGES, from the first start on */
	bool writing;			/* a live writer */
	enum step step;
	bool to_ram, started;		/* W_DMA: which transfer; whether RUN was set */
	uint64_t seq, deadline;		/* the record in hand; end of its transfer or pause */
} functions[MAX_FUNCTIONS];

struct options {
	const char *bdf;
	uint64_t seed;
	bool has_seed, stop;
	int64_t slots, interval_us;
};

static struct hdr *hdr(const struct function *f) { return (struct hdr *)f->area; }
static struct rec *ring_a(const struct function *f) { return (struct rec *)(f->area + OFF_A); }
static struct rec *ring_b(const struct function *f) { return (struct rec *)(f->area + OFF_B); }
static struct rec *resident(const struct function *f) { return (struct rec *)(f->area + OFF_RESIDENT); }
static uint64_t gpa(const struct function *f) { return (uint64_t)f->area; }	/* identity map */

/* ---------------------------------------------------------------- output */

static void out_list(struct reply *r, const char *key, const struct list *l)
{
	reply_printf(r, ",\"%s\":[", key);
	for (unsigned i = 0; i < l->len; i++)
		reply_printf(r, i ? ",%lu" : "%lu", (unsigned long)l->v[i]);
	reply_printf(r, "]");
}

static const char *yes(bool b) { return b ? "true" : "false"; }

/* ---------------------------------------------------------------- device */


/* Registers below 0x80 take 32-bit accesses only, the DMA registers 64-bit ones too. */
static uint64_t rd(const struct function *f, unsigned off)
{
	uint64_t v;

	compiler_barrier();
	v = off < EDU_DMA_SRC ? mmio_read32(f->bar0 + off) : mmio_read64(f->bar0 + off);
	compiler_barrier();
	return v;
}

static void wr(const struct function *f, unsigned off, uint64_t v)
{
	compiler_barrier();
	if (off < EDU_DMA_SRC)
		mmio_write32(f->bar0 + off, (uint32_t)v);
	else
		mmio_write64(f->bar0 + off, v);
	compiler_barrier();
}

static bool edu_tick(uint64_t now);

/* A command's wait: the writers' steps that are due, else sleep to the next tick. */
static void wait_tick(void)
{
	if (!edu_tick(now_ns()))
		idle();
}

/* Until the bits in mask read 0; false after timeout_ns. */
static bool wait_clear(const struct function *f, unsigned off, uint64_t mask, uint64_t timeout_ns)
{
	uint64_t deadline = now_ns() + timeout_ns;

	while (rd(f, off) & mask) {
		if (now_ns() > deadline)
			return false;
		wait_tick();
	}
	return true;
}

/* Start a transfer; the fence orders the CPU's writes to RAM before it. */
static void dma_start(const struct function *f, uint64_t src, uint64_t dst, uint64_t dir,
		      uint64_t len)
{
	wr(f, EDU_DMA_SRC, src);
	wr(f, EDU_DMA_DST, dst);
	wr(f, EDU_DMA_CNT, len);
	barrier();
	wr(f, EDU_DMA_CMD, dir | EDU_RUN);
}

/* One transfer, waited for (commands only); false if RUN never cleared. */
static bool edu_dma(const struct function *f, uint64_t src, uint64_t dst, uint64_t dir,
		    uint64_t len)
{
	if (!wait_clear(f, EDU_DMA_CMD, EDU_RUN, DMA_TIMEOUT_NS))
		return false;
	dma_start(f, src, dst, dir, len);
	if (!wait_clear(f, EDU_DMA_CMD, EDU_RUN, DMA_TIMEOUT_NS))
		return false;
	barrier();
	return true;
}

static struct function *find_function(const char *bdf)
{
	for (int i = 0; i < MAX_FUNCTIONS; i++)
		if (!strcmp(functions[i].bdf, bdf))
			return &functions[i];
	return NULL;
}

/* The --bdf function if it is an edu one, named as pci_bdf() names it (the table's key). */
static bool lookup(const char *arg, struct pci_function *pci, char bdf[16], struct reply *r)
{
	if (!pci_lookup(arg, EDU_VENDOR, EDU_DEVICE, pci, r))
		return false;
	pci_bdf(pci, bdf, 16);
	return true;
}

/* The function's table entry, made at first sight with its BAR0 sized then. */
static struct function *function_of(const char *bdf, const struct pci_function *pci,
				    struct reply *r)
{
	struct function *f = find_function(bdf), *free_entry = find_function("");
	uint64_t base, size;
	bool io;

	if (f)
		return f;
	if (!free_entry) {
		reply_error(r, "more than %d edu functions", MAX_FUNCTIONS);
		return NULL;
	}
	base = pci_bar(pci, 0, &io, &size);
	if (io || !base || size < BAR0_BYTES || base + size > 4096 * MIB) {
		reply_error(r, "%s: BAR0 is not an assigned 1 MiB memory BAR below 4 GiB "
			    "(base 0x%lx, size 0x%lx%s)", bdf, (unsigned long)base,
			    (unsigned long)size, io ? ", I/O" : "");
		return NULL;
	}
	free_entry->bar0 = base;
	snprintf(free_entry->bdf, sizeof(free_entry->bdf), "%s", bdf);
	return free_entry;
}

/* Memory decode and bus mastering on, BAR0 mapped, the ID register checked. */
static struct function *edu_open(const char *arg, struct reply *r)
{
	struct pci_function pci;
	struct function *f;
	char bdf[16];
	uint16_t cmd;
	uint32_t id;

	if (!lookup(arg, &pci, bdf, r) || !(f = function_of(bdf, &pci, r)))
		return NULL;
	pci_enable(&pci);
	cmd = pci_read16(&pci, 0x04);
	if ((cmd & CMD_MEM_MASTER) != CMD_MEM_MASTER) {
		reply_error(r, "%s: COMMAND is 0x%04x after setting MEM and MASTER", bdf, cmd);
		return NULL;
	}
	id = (uint32_t)rd(f, EDU_ID);
	if (id != EDU_ID_VALUE) {
		reply_error(r, "%s: ID reads 0x%08x, not 0x%08x", bdf, id, EDU_ID_VALUE);
		return NULL;
	}
	return f;
}

/* A start completed on this function (and nothing since wiped it). */
static bool has_state(const struct function *f)
{
	const struct hdr *h = f && f->area ? hdr(f) : NULL;

	return h && h->magic == STATE_MAGIC && !strcmp(h->bdf, f->bdf) && h->slots >= 1 &&
	       h->slots <= MAX_SLOTS;
}

static bool need_state(const struct function *f, const char *bdf, struct reply *r)
{
	if (!has_state(f))
		reply_error(r, "%s holds no state of a start (run start first)", bdf);
	return has_state(f);
}

/* ---------------------------------------------------------------- writer */

static void writer_end(struct function *f)
{
	f->writing = false;
	hdr(f)->stopped = 1;
}

/*
 * One step of edu.c's writer loop: build record seq in slot (seq-1) % N of A, set
 * issued, copy it into buffer chunk (seq-1) % 32 and from there into the same
 * slot of B, set done, pause interval_us.  True when the next step is due now.
 */
static bool writer_step(struct function *f, uint64_t now)
{
	struct hdr *h = hdr(f);
	uint32_t k = (uint32_t)((f->seq - 1) % h->slots);
	uint64_t chunk = EDU_BUF + (f->seq - 1) % WRITER_CHUNKS * REC_SIZE;
	struct rec rec;

	switch (f->step) {
	case W_NEXT:
		if (h->stop) {
			writer_end(f);
			return false;
		}
		f->seq++;
		k = (uint32_t)((f->seq - 1) % h->slots);
		rec_build(&rec, f->seq, k, now);
		memcpy(&ring_a(f)[k], &rec, sizeof(rec));
		h->issued = f->seq;
		f->step = W_DMA;
		f->to_ram = f->started = false;
		f->deadline = now + DMA_TIMEOUT_NS;
		return true;
	case W_DMA:
		if (rd(f, EDU_DMA_CMD) & EDU_RUN) {
			if (now <= f->deadline)
				return false;	/* polled again at the next tick */
			h->dma_timeouts++;
			writer_end(f);
			return false;
		}
		if (!f->started) {
			if (f->to_ram)
				dma_start(f, chunk, gpa(f) + OFF_B + k * REC_SIZE, EDU_TO_RAM, REC_SIZE);
			else
				dma_start(f, gpa(f) + OFF_A + k * REC_SIZE, chunk, 0, REC_SIZE);
			f->started = true;
			f->deadline = now + DMA_TIMEOUT_NS;
			return false;
		}
		barrier();	/* the device's writes to RAM before what follows */
		if (!f->to_ram) {
			f->to_ram = true;
			f->started = false;
			f->deadline = now + DMA_TIMEOUT_NS;
			return true;
		}
		h->done = f->seq;
		f->step = W_PAUSE;
		f->deadline = now + h->interval_us * 1000;
		return true;
	case W_PAUSE:
		if (!h->stop && now < f->deadline)
			return false;
		f->step = W_NEXT;
		return true;
	}
	return false;
}

static bool edu_tick(uint64_t now)
{
	bool more = false;

	for (int i = 0; i < MAX_FUNCTIONS; i++)
		if (functions[i].writing)
			more |= writer_step(&functions[i], now);
	return more;
}

/* Ask the writer to stop after its current record and wait for it; false (error set) after 30 s. */
static bool stop_writer(struct function *f, bool *was, struct reply *r)
{
	uint64_t deadline = now_ns() + STOP_TIMEOUT_NS;
	struct hdr *h = hdr(f);

	*was = f->writing;
	h->stop = 1;
	while (f->writing) {
		if (now_ns() > deadline) {
			reply_error(r, "%s: writer pid %d did not stop within 30 s (issued %lu, done %lu)",
				    f->bdf, PID, (unsigned long)h->issued, (unsigned long)h->done);
			return false;
		}
		wait_tick();
	}
	return true;
}

/* Until the writer's first record is back in B; if it is not, the writer is ended. */
static bool wait_first_record(struct function *f, struct reply *r)
{
	uint64_t deadline = now_ns() + FIRST_TIMEOUT_NS;
	struct hdr *h = hdr(f);
	const char *why = NULL;

	while (!why && !h->done) {
		if (!f->writing)
			why = "the device's DMA did not finish";
		else if (now_ns() > deadline)
			why = "no record after 25 s";
		else
			wait_tick();
	}
	/* Only the device writes B, zeroed by start: anything there is its copy. */
	if (!why && rec_zero(&ring_b(f)[0]))
		why = "the device's copy did not land in guest memory (DMA mask?)";
	if (!why)
		return true;
	h->stop = 1;
	if (f->writing)
		writer_end(f);
	reply_error(r, "%s: first record (ring at gpa 0x%lx): %s", f->bdf, (unsigned long)gpa(f), why);
	return false;
}

/* ---------------------------------------------------------------- commands */

static void cmd_list(const struct options *o, struct reply *r)
{
	struct pci_function found[MAX_LISTED];
	int n = pci_find(EDU_VENDOR, EDU_DEVICE, found, MAX_LISTED);
	char bdf[16];

	(void)o;
	reply_printf(r, "{\"devices\":[");
	for (int i = 0; i < n; i++) {
		pci_bdf(&found[i], bdf, sizeof(bdf));
		reply_printf(r, "%s{\"bdf\":\"%s\"}", i ? "," : "", bdf);
	}
	reply_printf(r, "]}");
}

/* Liveness and factorial from the seed, set and checked before the load starts. */
static bool set_registers(const struct function *f, uint64_t seed, struct reply *r)
{
	struct hdr *h = hdr(f);
	uint32_t got;

	if (rd(f, EDU_STATUS) & EDU_IRQFACT)
		wr(f, EDU_STATUS, 0);
	got = (uint32_t)rd(f, EDU_IRQ_STATUS);
	if (got)
		wr(f, EDU_IRQ_ACK, got);

	h->liveness_written = (uint32_t)((seed + 1) * 0x9e3779b97f4a7c15ULL >> 32);
	h->liveness_expected = ~h->liveness_written;
	wr(f, EDU_LIVENESS, h->liveness_written);
	got = (uint32_t)rd(f, EDU_LIVENESS);
	if (got != h->liveness_expected) {
		reply_error(r, "%s: liveness reads 0x%08x after writing 0x%08x", f->bdf, got,
			    h->liveness_written);
		return false;
	}
	h->fact_n = 10 + (uint32_t)(seed % 12);
	h->fact_expected = fact_u32(h->fact_n);
	if (!wait_clear(f, EDU_STATUS, EDU_COMPUTING, FACT_TIMEOUT_NS)) {
		reply_error(r, "%s: an earlier factorial is still computing after 10 s", f->bdf);
		return false;
	}
	wr(f, EDU_FACT, h->fact_n);
	if (!wait_clear(f, EDU_STATUS, EDU_COMPUTING, FACT_TIMEOUT_NS)) {
		reply_error(r, "%s: factorial of %u still computing after 10 s", f->bdf, h->fact_n);
		return false;
	}
	got = (uint32_t)rd(f, EDU_FACT);
	if (got != h->fact_expected) {
		reply_error(r, "%s: factorial of %u reads %u, not %u", f->bdf, h->fact_n, got,
			    h->fact_expected);
		return false;
	}
	return true;
}

/* The resident records: built in the state area, copied into the buffer's upper half. */
static bool put_resident(const struct function *f, struct reply *r)
{
	uint64_t now = now_ns();

	for (uint32_t j = 0; j < CHUNKS - WRITER_CHUNKS; j++)
		rec_build(&resident(f)[j], RESIDENT_SEQ + j, j, now);
	if (!edu_dma(f, gpa(f) + OFF_RESIDENT, EDU_BUF + WRITER_CHUNKS * REC_SIZE, 0,
		     (CHUNKS - WRITER_CHUNKS) * REC_SIZE)) {
		reply_error(r, "%s: the resident records' transfer into the buffer did not finish",
			    f->bdf);
		return false;
	}
	return true;
}

static void cmd_start(const struct options *o, struct reply *r)
{
	uint64_t seed = o->has_seed ? o->seed : mix64(now_ns() ^ mix64(__builtin_ia32_rdtsc()));
	struct function *f = edu_open(o->bdf, r);
	struct hdr *h;

	if (!f)
		return;
	if (f->writing)
		return reply_error(r, "%s: a writer is still running: stop it first", f->bdf);
	if (!f->area && !(f->area = page_alloc(AREA_PAGES)))
		return reply_error(r, "%s: no room for the state area in the micro guest's device arena",
				   f->bdf);
	if (!wait_clear(f, EDU_DMA_CMD, EDU_RUN, DMA_TIMEOUT_NS))
		return reply_error(r, "%s: a DMA transfer in flight did not finish in 10 s", f->bdf);
	h = hdr(f);
	memset(f->area, 0, OFF_SCRATCH + EDU_BUF_BYTES);
	if (!set_registers(f, seed, r))
		return;
	h->slots = (uint32_t)o->slots;
	h->seed = seed;
	h->gpa = gpa(f);
	h->interval_us = (uint64_t)o->interval_us;
	snprintf(h->bdf, sizeof(h->bdf), "%s", f->bdf);
	h->magic = STATE_MAGIC;
	if (!put_resident(f, r))
		return;

	h->pid = PID;
	f->seq = 0;
	f->step = W_NEXT;
	f->writing = true;
	if (!wait_first_record(f, r))
		return;

	reply_printf(r, "{\"bdf\":\"%s\",\"gpa\":\"0x%lx\",\"slots\":%u,\"seed\":%lu", f->bdf,
		     (unsigned long)gpa(f), h->slots, (unsigned long)seed);
	reply_printf(r, ",\"liveness\":%u,\"factorial\":%u,\"factorial_n\":%u", h->liveness_expected,
		     h->fact_expected, h->fact_n);
	reply_printf(r, ",\"interval_us\":%ld,\"pid\":%d}", (long)o->interval_us, PID);
}

static void cmd_status(const struct options *o, struct reply *r)
{
	struct function *f = edu_open(o->bdf, r);
	const struct hdr *h;

	if (!f)
		return;
	reply_printf(r, "{\"bdf\":\"%s\",\"id\":%lu,\"liveness\":%lu", f->bdf,
		     (unsigned long)rd(f, EDU_ID), (unsigned long)rd(f, EDU_LIVENESS));
	reply_printf(r, ",\"factorial\":%lu,\"status\":%lu,\"irq_status\":%lu",
		     (unsigned long)rd(f, EDU_FACT), (unsigned long)rd(f, EDU_STATUS),
		     (unsigned long)rd(f, EDU_IRQ_STATUS));
	reply_printf(r, ",\"dma_src\":\"0x%lx\",\"dma_dst\":\"0x%lx\"",
		     (unsigned long)rd(f, EDU_DMA_SRC), (unsigned long)rd(f, EDU_DMA_DST));
	reply_printf(r, ",\"dma_cnt\":%lu,\"dma_cmd\":%lu", (unsigned long)rd(f, EDU_DMA_CNT),
		     (unsigned long)rd(f, EDU_DMA_CMD));
	if (has_state(f)) {
		h = hdr(f);
		reply_printf(r, ",\"issued\":%lu,\"done\":%lu,\"dma_timeouts\":%lu,\"pid\":%d"
			     ",\"writer_alive\":%s", (unsigned long)h->issued, (unsigned long)h->done,
			     (unsigned long)h->dma_timeouts, h->pid, yes(f->writing));
	}
	reply_printf(r, "}");
}

static void cmd_stop(const struct options *o, struct reply *r)
{
	struct pci_function pci;
	struct function *f;
	char bdf[16];
	bool was;

	if (!lookup(o->bdf, &pci, bdf, r))
		return;
	f = find_function(bdf);
	if (!need_state(f, bdf, r) || !stop_writer(f, &was, r))
		return;
	reply_printf(r, "{\"bdf\":\"%s\",\"stopped\":true,\"was_running\":%s,\"done\":%lu}", bdf,
		     yes(was), (unsigned long)hdr(f)->done);
}

/* A copy of n slots; a slot that looks torn may be mid-write by the device: copied again. */
static void ring_copy(struct rec *dst, const struct rec *src, uint32_t n)
{
	compiler_barrier();
	memcpy(dst, src, n * sizeof(*dst));
	for (uint32_t k = 0; k < n; k++) {
		if (rec_zero(&dst[k]) || rec_valid(&dst[k]))
			continue;
		delay_us(1000);
		memcpy(&dst[k], &src[k], sizeof(*dst));
	}
}

/*
 * The device's buffer, copied out through scratch, against what this run put in
 * it (edu.c's check_buffer): a resident chunk holds its resident record, writer
 * chunk j the newest seq <= issued with (seq-1) % 32 == j, byte for byte if that
 * record is still in A, else whole with its seq and slot.
 */
static const char *check_buffer(const struct function *f, uint64_t *compared, struct list *bad,
				uint64_t *nbad)
{
	const struct hdr *h = hdr(f);
	uint8_t *scratch = f->area + OFF_SCRATCH;
	uint64_t issued = h->issued, done = h->done;

	memset(scratch, 0xa5, EDU_BUF_BYTES);
	if (!edu_dma(f, EDU_BUF, gpa(f) + OFF_SCRATCH, EDU_TO_RAM, EDU_BUF_BYTES))
		return "timeout";
	for (uint32_t j = WRITER_CHUNKS; j < CHUNKS; j++) {
		++*compared;
		if (memcmp(scratch + j * REC_SIZE, &resident(f)[j - WRITER_CHUNKS], REC_SIZE)) {
			++*nbad;
			list_add(bad, j);
		}
	}
	for (uint32_t j = 0; j < WRITER_CHUNKS; j++) {
		const struct rec *got = (const struct rec *)(scratch + j * REC_SIZE);
		const struct rec *a = ring_a(f);
		uint64_t seq = due_seq(issued, WRITER_CHUNKS, j);
		uint32_t k;
		bool same;

		if (!seq || (seq == issued && issued > done))
			continue;	/* never written, or its transfers did not finish */
		k = (uint32_t)((seq - 1) % h->slots);
		if (a[k].seq == seq && rec_valid(&a[k]))
			same = !memcmp(got, &a[k], REC_SIZE);
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

static void out_tally(struct reply *r, const struct tally *t)
{
	for (int c = 0; c < K_N; c++)
		reply_printf(r, ",\"%s\":%lu", kind_names[c], (unsigned long)t->n[c]);
}

static bool tally_clean(const struct tally *t)
{
	return !t->n[K_LOST] && !t->n[K_TORN] && !t->n[K_FUTURE] && !t->n[K_FOREIGN];
}

static void cmd_verify(const struct options *o, struct reply *r)
{
	static struct rec a[MAX_SLOTS], b[MAX_SLOTS];
	struct tally ta = { 0 }, tb = { 0 };
	uint64_t issued0, done0, issued, done, compared = 0, nbad = 0, timeouts;
	const char *buf_read = "skipped";
	struct list chunks = { 0 };
	struct function *f = edu_open(o->bdf, r);
	uint32_t live, fact, n;
	struct hdr *h;
	bool alive, was, clean;

	if (!f || !need_state(f, f->bdf, r))
		return;
	if (o->stop && !stop_writer(f, &was, r))
		return;
	h = hdr(f);
	alive = f->writing;
	n = h->slots;

	issued0 = h->issued;
	done0 = h->done;
	ring_copy(b, ring_b(f), n);
	ring_copy(a, ring_a(f), n);
	issued = h->issued;
	done = h->done;
	scan(b, n, done0, done, &tb);
	scan(a, n, issued0, issued, &ta);

	live = (uint32_t)rd(f, EDU_LIVENESS);
	if (!wait_clear(f, EDU_STATUS, EDU_COMPUTING, FACT_TIMEOUT_NS))
		return reply_error(r, "%s: factorial still computing after 10 s", f->bdf);
	fact = (uint32_t)rd(f, EDU_FACT);
	timeouts = h->dma_timeouts;
	if (!alive)	/* the engine is the writer's while it runs */
		buf_read = check_buffer(f, &compared, &chunks, &nbad);
	timeouts += !strcmp(buf_read, "timeout");

	reply_printf(r, "{\"bdf\":\"%s\",\"gpa\":\"0x%lx\",\"gpa_stable\":%s", f->bdf,
		     (unsigned long)h->gpa, yes(h->gpa == gpa(f)));
	reply_printf(r, ",\"issued\":%lu,\"done\":%lu,\"slots\":%u", (unsigned long)issued,
		     (unsigned long)done, n);
	out_tally(r, &tb);
	out_list(r, "lost_seqs", &tb.lost_seqs);
	out_list(r, "torn_slots", &tb.torn_slots);
	out_list(r, "future_seqs", &tb.future_seqs);
	reply_printf(r, ",\"source\":{\"slots\":%u", n);
	out_tally(r, &ta);
	out_list(r, "lost_seqs", &ta.lost_seqs);
	out_list(r, "torn_slots", &ta.torn_slots);
	reply_printf(r, "},\"liveness\":{\"expected\":%u,\"read\":%u}", h->liveness_expected, live);
	reply_printf(r, ",\"factorial\":{\"n\":%u,\"expected\":%u,\"read\":%u}", h->fact_n,
		     h->fact_expected, fact);
	reply_printf(r, ",\"buffer\":{\"read\":\"%s\",\"compared\":%lu,\"mismatched\":%lu", buf_read,
		     (unsigned long)compared, (unsigned long)nbad);
	out_list(r, "chunks", &chunks);
	clean = done && tally_clean(&tb) && tally_clean(&ta) && live == h->liveness_expected &&
		fact == h->fact_expected && !nbad && !timeouts;
	reply_printf(r, "},\"dma_timeouts\":%lu,\"writer_alive\":%s,\"pid\":%d,\"seed\":%lu"
		     ",\"ok_all\":%s}", (unsigned long)timeouts, yes(alive), h->pid,
		     (unsigned long)h->seed, yes(clean));
}

/* ---------------------------------------------------------------- selftest */

/* edu.c's selftest (edu_records.h), so that both builds are known to classify alike. */
static void cmd_selftest(const struct options *o, struct reply *r)
{
	const char *why;

	(void)o;
	if (!edu_selftest(&why))
		return reply_error(r, "selftest: %s", why);
	reply_printf(r, "{\"selftest\":\"ok\"}");
}

/* ---------------------------------------------------------------- options */

static bool parse_options(const struct args *a, struct reply *r, struct options *o)
{
	static const char *const known[] = { "bdf", "seed", "slots", "interval-us", "stop", NULL };
	const char *bad = arg_unknown(a, known), *seed = arg_value(a, "seed");

	if (bad || (!arg_value(a, "bdf") && arg_flag(a, "bdf")) || (!seed && arg_flag(a, "seed"))) {
		reply_error(r, "unknown or incomplete option '%s'",
			    bad ? bad : arg_flag(a, "seed") && !seed ? "--seed" : "--bdf");
		return false;
	}
	for (int i = 2; i < a->argc; i++) {	/* a word that is no option's value */
		const char *w = a->argv[i], *prev = a->argv[i - 1];

		if (strncmp(w, "--", 2) && (strncmp(prev, "--", 2) || !strcmp(prev, "--stop"))) {
			reply_error(r, "unexpected argument '%s'", w);
			return false;
		}
	}
	o->bdf = arg_value(a, "bdf");
	o->stop = arg_flag(a, "stop");
	if (!arg_unsigned(a, r, "seed", &o->seed, &o->has_seed) ||
	    !arg_number(a, r, "slots", &o->slots) || !arg_number(a, r, "interval-us", &o->interval_us))
		return false;
	if (o->slots < 1 || o->slots > MAX_SLOTS) {
		reply_error(r, "--slots must be 1..%d", MAX_SLOTS);
		return false;
	}
	if (o->interval_us < 0 || o->interval_us > INTERVAL_MAX_US) {
		reply_error(r, "--interval-us must be 0..%ld", INTERVAL_MAX_US);
		return false;
	}
	return true;
}

static void edu_command(const struct args *a, struct reply *r)
{
	static const struct {
		const char *name;
		void (*run)(const struct options *, struct reply *);
	} commands[] = {
		{ "list", cmd_list }, { "start", cmd_start }, { "status", cmd_status },
		{ "verify", cmd_verify }, { "stop", cmd_stop }, { "selftest", cmd_selftest },
	};
	struct options o = { .slots = MAX_SLOTS };

	if (!parse_options(a, r, &o))
		return;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(a->argv[1], commands[i].name))
			return commands[i].run(&o, r);
	reply_error(r, "unknown command '%s' (list|start|status|verify|stop|selftest)", a->argv[1]);
}

const struct agent edu_agent = { "edu", edu_command, edu_tick };
