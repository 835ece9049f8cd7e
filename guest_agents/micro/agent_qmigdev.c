// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qmigdev on the micro guest: guest_agents/qmigdev.c's commands, records and
 * answers, with the device reached directly (config space by port I/O, the BARs
 * at their physical addresses).  The device facts it relies on, the record
 * layout and the slot classes are described in qmigdev.c.
 *
 *   list | status --bdf B | stop --bdf B | selftest
 *   dma-start  --bdf B [--ring-kb N] [--interval-us U]
 *   dma-verify --bdf B [--stop]
 *   mem-fill   --bdf B --seed S        mem-check --bdf B --seed S
 *   p2p-start  --bdf A --peer B [--slots N] [--path auto|vfio|direct] [--interval-us U]
 *   p2p-verify --bdf A --peer B [--stop]
 *
 * Where the Linux agent keeps a function's DMA buffers in hugetlbfs files and
 * its P2P baseline in /run, this one keeps them in a table in guest RAM: they
 * migrate with the guest just the same.  Every command runs to its end before
 * the next line is read; the device's engines need no help in between.
 */
#include "micro.h"

#define QMIG_VENDOR 0x1af4
#define QMIG_DEVICE 0x10f7

#define BAR0_SIZE 0x1000
#define BAR2_SIZE 0x10000
#define RX_OFF 0xf000		/* P2P receive window in BAR2 */
#define RX_SLOTS 64
#define MEM_BYTES RX_OFF	/* device memory that is not the window */
#define CHUNK 4096		/* the device's precopy/stream granule */
#define RING_MAX (2 * MIB)	/* the Linux agent's ring: one 2 MiB huge page */
#define MAX_FUNCTIONS 8

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
#define ST_STATE(st) (((st) >> 16) & 0xf)

static const char *const state_names[] = {
	"ERROR", "STOP", "RUNNING", "STOP_COPY", "RESUMING", "RUNNING_P2P",
	"PRE_COPY", "PRE_COPY_P2P",
};
static const char *const path_names[] = { "auto", "vfio", "direct" };

#define SETTLE_TIMEOUT_NS 5000000000LL
#define START_WAIT_MAX_NS 3000000000LL

/* What the Linux agent keeps in files, per function: its DMA buffers and P2P baseline. */
struct p2p_base {
	char peer[16];
	uint64_t first;
	uint32_t sent0, received0;
};

static struct function_state {
	char bdf[16];			/* "" = free entry */
	uint64_t bar0, bar2;		/* sized once, at first sight */
	uint8_t *ring;			/* RING_MAX bytes, from dma-start on */
	uint8_t *buf;			/* MEM_BYTES of scratch for one-shot DMA */
	bool has_p2p;
	struct p2p_base p2p;
} functions[MAX_FUNCTIONS];

struct options {
	const char *bdf, *peer;
	int64_t ring_kb, interval_us, slots, path;
	uint64_t seed;
	bool has_seed, stop;
};

/* ---------------------------------------------------------------- output */

/* Members of the one JSON object, comma-separated as they come. */
struct json {
	struct reply *r;
	bool first;
};

static void j_key(struct json *j, const char *key)
{
	if (!j->first)
		reply_printf(j->r, ",");
	j->first = false;
	if (key)
		reply_printf(j->r, "\"%s\":", key);
}

static void j_u64(struct json *j, const char *k, uint64_t v) { j_key(j, k); reply_printf(j->r, "%lu", (unsigned long)v); }
static void j_i64(struct json *j, const char *k, int64_t v) { j_key(j, k); reply_printf(j->r, "%ld", (long)v); }
static void j_hex(struct json *j, const char *k, uint64_t v) { j_key(j, k); reply_printf(j->r, "\"0x%lx\"", (unsigned long)v); }
static void j_str(struct json *j, const char *k, const char *s) { j_key(j, k); reply_printf(j->r, "\"%s\"", s); }
static void j_bool(struct json *j, const char *k, bool v) { j_key(j, k); reply_printf(j->r, v ? "true" : "false"); }
static void j_null(struct json *j, const char *k) { j_key(j, k); reply_printf(j->r, "null"); }

static void j_open(struct json *j, const char *key, char c)
{
	j_key(j, key);
	reply_printf(j->r, "%c", c);
	j->first = true;
}

static void j_close(struct json *j, char c)
{
	reply_printf(j->r, "%c", c);
	j->first = false;
}

static struct json j_begin(struct reply *r)
{
	reply_printf(r, "{");
	return (struct json){ r, true };
}

static void j_end(struct json *j)
{
	reply_printf(j->r, "}");
}

/* The record layout and the slot classifier, shared with the Linux agent. */
#include "../qmigdev_records.h"

/* ---------------------------------------------------------------- device */

struct qdev {
	struct function_state *state;
	const char *bdf;
	struct pci_function pci;
};


/* The BARs are uncached; the barriers keep the compiler from moving DMA-buffer accesses. */
static uint32_t rd32(const struct qdev *d, uint32_t off)
{
	uint32_t v;

	compiler_barrier();
	v = mmio_read32(d->state->bar0 + off);
	compiler_barrier();
	return v;
}

static void wr32(const struct qdev *d, uint32_t off, uint32_t v)
{
	compiler_barrier();
	mmio_write32(d->state->bar0 + off, v);
	compiler_barrier();
}

/* hi/lo/hi, as qmigdev.c: 32-bit accesses only, retried over a carry. */
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

/* BAR2 with aligned 8-byte accesses only (a trapped mapping need not take wider ones). */
static void bar2_read(const struct qdev *d, uint32_t off, void *dst, size_t len)
{
	const volatile uint64_t *src = (const volatile uint64_t *)(d->state->bar2 + off);
	uint64_t *out = dst;

	for (size_t i = 0; i < len / 8; i++)
		out[i] = src[i];
}

static void bar2_write(const struct qdev *d, uint32_t off, const void *from, size_t len)
{
	volatile uint64_t *dst = (volatile uint64_t *)(d->state->bar2 + off);
	const uint64_t *in = from;

	for (size_t i = 0; i < len / 8; i++)
		dst[i] = in[i];
}

/*
 * A memory BAR of at least `size` bytes that the firmware placed below 4 GiB (what the
 * identity map covers), or 0 with the reply's error set.  Sizing a BAR turns decoding
 * off for a moment, which would fail a peer's P2P writes into it: it is done once per
 * function, before any engine of ours runs.
 */
static uint64_t memory_bar(const struct pci_function *f, const char *bdf, int bar, uint64_t size,
			   struct reply *r)
{
	uint64_t base, got;
	bool io;

	base = pci_bar(f, bar, &io, &got);
	if (io || !base || got < size || base + got > 4096 * MIB) {
		reply_error(r, "%s: BAR%d is not an assigned memory BAR of %lu bytes below 4 GiB "
			    "(base 0x%lx, size 0x%lx%s)", bdf, bar, (unsigned long)size,
			    (unsigned long)base, (unsigned long)got, io ? ", I/O" : "");
		return 0;
	}
	return base;
}

static struct function_state *state_of(const char *bdf, const struct pci_function *f,
				       struct reply *r)
{
	struct function_state *free_slot = NULL;

	for (int i = 0; i < MAX_FUNCTIONS; i++) {
		if (!strcmp(functions[i].bdf, bdf))
			return &functions[i];
		if (!free_slot && !functions[i].bdf[0])
			free_slot = &functions[i];
	}
	if (!free_slot) {
		reply_error(r, "more than %d qmigdev functions", MAX_FUNCTIONS);
		return NULL;
	}
	free_slot->bar0 = memory_bar(f, bdf, 0, BAR0_SIZE, r);
	free_slot->bar2 = memory_bar(f, bdf, 2, BAR2_SIZE, r);
	if (!free_slot->bar0 || !free_slot->bar2)
		return NULL;
	snprintf(free_slot->bdf, sizeof(free_slot->bdf), "%s", bdf);
	return free_slot;
}

/*
 * Open a function for register access: its BARs decoded and, as a driver would,
 * bus mastering on before its DMA engines are used (the device does not check it).
 */
static bool dev_open(struct qdev *d, const char *bdf, const char *opt, struct reply *r)
{
	uint32_t id;

	if (!bdf) {
		reply_error(r, "missing --%s (see 'list')", opt);
		return false;
	}
	if (!pci_lookup(bdf, QMIG_VENDOR, QMIG_DEVICE, &d->pci, r))
		return false;
	d->bdf = bdf;
	d->state = state_of(bdf, &d->pci, r);
	if (!d->state)
		return false;
	pci_enable(&d->pci);
	id = rd32(d, REG_ID);
	if (id != ID_MAGIC) {
		reply_error(r, "%s: ID register reads 0x%08x, not 0x%08x (\"QMIG\")", bdf, id, ID_MAGIC);
		return false;
	}
	return true;
}

/* The function's ring or scratch buffer: made on first use, the same pages ever after. */
static uint8_t *dma_buffer(uint8_t **slot, size_t bytes, struct reply *r)
{
	if (!*slot)
		*slot = page_alloc((bytes + PAGE_SIZE - 1) / PAGE_SIZE);
	if (!*slot)
		reply_error(r, "no room for a %lu-byte DMA buffer in the micro guest's device arena",
			    (unsigned long)bytes);
	return *slot;
}

/* ---------------------------------------------------------------- records */

/* Copy the slots out, then again those that looked torn (written during the first pass). */
static struct record *copy_slots(const struct qdev *d, const uint8_t *ram, uint32_t nslots)
{
	static struct record copy[RING_MAX / REC_SIZE];

	for (int pass = 0; pass < 2; pass++) {
		for (uint32_t i = 0; i < nslots; i++) {
			if (pass && (record_zero(&copy[i]) || record_intact(&copy[i])))
				continue;
			if (ram)
				memcpy(&copy[i], ram + (size_t)i * REC_SIZE, REC_SIZE);
			else
				bar2_read(d, RX_OFF + i * REC_SIZE, &copy[i], REC_SIZE);
		}
		compiler_barrier();
	}
	return copy;
}

/* After enabling an engine: its first record or its ERR bit (bounded), so a bad address
 * fails the start command rather than the verify. */
static uint32_t wait_first_record(const struct qdev *d, uint32_t seq_reg, uint64_t seq0,
				  uint32_t err_bit, int64_t interval_us)
{
	int64_t wait = 3LL * interval_us * 1000 + 200000000LL;
	uint64_t deadline = now_ns() + (uint64_t)(wait < START_WAIT_MAX_NS ? wait : START_WAIT_MAX_NS);
	uint32_t st;

	for (;;) {
		st = rd32(d, REG_STATUS);
		if ((st & err_bit) || rd64(d, seq_reg) != seq0 || now_ns() > deadline)
			return st;
		idle();
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

static void cmd_list(const struct options *o, struct reply *r)
{
	struct pci_function found[MAX_FUNCTIONS];
	int n = pci_find(QMIG_VENDOR, QMIG_DEVICE, found, MAX_FUNCTIONS);
	char bdfs[MAX_FUNCTIONS][16];
	struct json j = j_begin(r);

	(void)o;
	j_open(&j, "devices", '[');
	for (int i = 0; i < n; i++) {
		struct qdev d;

		pci_bdf(&found[i], bdfs[i], sizeof(bdfs[i]));
		if (!dev_open(&d, bdfs[i], "bdf", r))
			return;
		j_open(&j, NULL, '{');
		j_str(&j, "bdf", d.bdf);
		j_hex(&j, "bar0", d.state->bar0);
		j_hex(&j, "bar2", d.state->bar2);
		j_u64(&j, "tag", rd32(&d, REG_TAG));
		j_u64(&j, "mig_state", rd32(&d, REG_MIG_STATE));
		j_u64(&j, "status", rd32(&d, REG_STATUS));
		j_u64(&j, "version", rd32(&d, REG_VERSION));
		j_close(&j, '}');
	}
	j_close(&j, ']');
	j_end(&j);
}

static void cmd_status(const struct options *o, struct reply *r)
{
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

	if (!dev_open(&d, o->bdf, "bdf", r))
		return;
	st = rd32(&d, REG_STATUS);
	j = j_begin(r);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "bar0", d.state->bar0);
	j_hex(&j, "bar2", d.state->bar2);
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

static void cmd_dma_start(const struct options *o, struct reply *r)
{
	uint32_t bytes = (uint32_t)o->ring_kb * 1024, st;
	uint64_t ring_gpa;
	struct qdev d;
	struct json j;
	uint8_t *ring;

	if (!dev_open(&d, o->bdf, "bdf", r) || !(ring = dma_buffer(&d.state->ring, RING_MAX, r)))
		return;
	ring_gpa = (uint64_t)ring;
	/* Seqs restart at 1 and the head at 0 only through ENGINE_RESET. */
	wr32(&d, REG_CTRL, CTRL_ENGINE_RESET);
	memset(ring, 0, RING_MAX);
	wr32(&d, REG_INTERVAL_US, (uint32_t)o->interval_us);
	wr64(&d, REG_CONT_BASE, ring_gpa);
	wr32(&d, REG_CONT_SIZE, bytes);
	if (rd64(&d, REG_CONT_BASE) != ring_gpa || rd32(&d, REG_CONT_SIZE) != bytes)
		return reply_error(r, "%s: CONT_BASE/CONT_SIZE did not take 0x%lx/%u", d.bdf,
				   (unsigned long)ring_gpa, bytes);
	wr32(&d, REG_CONT_CTRL, CONT_EN);
	st = rd32(&d, REG_STATUS);
	if (st & ST_CONT_ERR)
		return reply_error(r, "%s: enabling the ring at 0x%lx (%u bytes) set CONT_ERR "
				   "(STATUS 0x%x)", d.bdf, (unsigned long)ring_gpa, bytes, st);
	st = wait_first_record(&d, REG_CONT_SEQ, 1, ST_CONT_ERR, o->interval_us);
	if (st & ST_CONT_ERR)
		return reply_error(r, "%s: the device could not write the ring at gpa 0x%lx "
				   "(CONT_ERRORS %u, STATUS 0x%x)", d.bdf, (unsigned long)ring_gpa,
				   rd32(&d, REG_CONT_ERRORS), st);
	j = j_begin(r);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "ring_gpa", ring_gpa);
	j_u64(&j, "ring_bytes", bytes);
	j_u64(&j, "slots", bytes / REC_SIZE);
	j_u64(&j, "interval_us", rd32(&d, REG_INTERVAL_US));
	j_u64(&j, "tag", rd32(&d, REG_TAG) & 0xffff);
	j_u64(&j, "next_seq", rd64(&d, REG_CONT_SEQ));
	j_u64(&j, "status", rd32(&d, REG_STATUS));
	j_end(&j);
}

static void cmd_dma_verify(const struct options *o, struct reply *r)
{
	struct view v = { .kind = KIND_CONT, .first = 1 };
	uint64_t base, next, head_seq, ring_gpa;
	uint32_t size, head;
	struct qdev d;
	struct json j;
	bool head_ok;

	if (!dev_open(&d, o->bdf, "bdf", r))
		return;
	if (!d.state->ring)
		return reply_error(r, "%s: no ring was set up (run dma-start first)", d.bdf);
	ring_gpa = (uint64_t)d.state->ring;
	if (o->stop)
		wr32(&d, REG_CONT_CTRL, 0);
	base = rd64(&d, REG_CONT_BASE);
	size = rd32(&d, REG_CONT_SIZE);
	if (!size || size % REC_SIZE || size > RING_MAX)
		return reply_error(r, "%s: CONT_SIZE %u is not a ring dma-start set up", d.bdf, size);
	if (base != ring_gpa)
		return reply_error(r, "%s: CONT_BASE 0x%lx is not the ring at 0x%lx (device reset?)",
				   d.bdf, (unsigned long)base, (unsigned long)ring_gpa);
	v.nslots = size / REC_SIZE;
	v.src = (uint16_t)rd32(&d, REG_TAG);
	/* HEAD and SEQ move together under the device lock: read them in a quiet moment. */
	do {
		head_seq = rd64(&d, REG_CONT_SEQ);
		head = rd32(&d, REG_CONT_HEAD);
	} while (rd64(&d, REG_CONT_SEQ) != head_seq);
	head_ok = head == (head_seq - 1) % v.nslots;

	v.next1 = rd64(&d, REG_CONT_SEQ);
	v.rec = copy_slots(&d, d.state->ring, v.nslots);
	v.next2 = next = rd64(&d, REG_CONT_SEQ);
	classify(&v);

	j = j_begin(r);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "ring_gpa", ring_gpa);
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

/* One synchronous one-shot copy; DMA_RESULT is its errno. A success that does not bump
 * DMA_COUNT means we are not looking at what we think: (uint32_t)-1 then. */
static uint32_t one_shot(const struct qdev *d, uint32_t cmd, uint64_t src, uint64_t dst,
			 uint32_t len, struct reply *r)
{
	uint32_t count = rd32(d, REG_DMA_COUNT), result;

	wr64(d, REG_DMA_SRC, src);
	wr64(d, REG_DMA_DST, dst);
	wr32(d, REG_DMA_LEN, len);
	wr32(d, REG_DMA_CMD, cmd);
	result = rd32(d, REG_DMA_RESULT);
	if (!result && rd32(d, REG_DMA_COUNT) != count + 1) {
		reply_error(r, "%s: one-shot DMA reported success but DMA_COUNT went %u -> %u",
			    d->bdf, count, rd32(d, REG_DMA_COUNT));
		return (uint32_t)-1;
	}
	return result;
}

static uint64_t count_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
	uint64_t n = 0;

	for (size_t i = 0; i < len; i++)
		n += a[i] != b[i];
	return n;
}

static uint64_t want[MEM_BYTES / 8], got[MEM_BYTES / 8];

static void cmd_mem_fill(const struct options *o, struct reply *r)
{
	struct qdev d;
	struct json j;
	uint64_t bad;
	uint32_t result;
	uint8_t *buf;

	if (!o->has_seed)
		return reply_error(r, "missing --seed S");
	if (!dev_open(&d, o->bdf, "bdf", r) || !(buf = dma_buffer(&d.state->buf, MEM_BYTES, r)))
		return;
	fill_pattern(want, MEM_BYTES / 8, o->seed);
	memcpy(buf, want, MEM_BYTES);
	result = one_shot(&d, DMA_CMD_TO_DEV, (uint64_t)buf, 0, MEM_BYTES, r);
	if (result == (uint32_t)-1)
		return;
	if (result)
		return reply_error(r, "%s: one-shot DMA guest -> BAR2 failed: DMA_RESULT %u, STATUS 0x%x",
				   d.bdf, result, rd32(&d, REG_STATUS));
	bar2_read(&d, 0, got, MEM_BYTES);
	bad = count_diff((uint8_t *)want, (uint8_t *)got, MEM_BYTES);
	if (bad)
		return reply_error(r, "%s: %lu of %u bytes of BAR2 differ after the DMA", d.bdf,
				   (unsigned long)bad, MEM_BYTES);
	j = j_begin(r);
	j_str(&j, "bdf", d.bdf);
	j_hex(&j, "seed", o->seed);
	j_u64(&j, "bytes", MEM_BYTES);
	j_hex(&j, "buf_gpa", (uint64_t)buf);
	j_u64(&j, "dma_result", result);
	j_u64(&j, "mmap_bytes_differing", bad);
	j_end(&j);
}

static void cmd_mem_check(const struct options *o, struct reply *r)
{
	struct seqlist chunks = { 0 };
	uint64_t mmap_bad, dma_bad;
	struct qdev d;
	struct json j;
	uint32_t result;
	uint8_t *buf;

	if (!o->has_seed)
		return reply_error(r, "missing --seed S");
	if (!dev_open(&d, o->bdf, "bdf", r) || !(buf = dma_buffer(&d.state->buf, MEM_BYTES, r)))
		return;
	fill_pattern(want, MEM_BYTES / 8, o->seed);

	/* (a) what a CPU sees through BAR2 */
	bar2_read(&d, 0, got, MEM_BYTES);
	mmap_bad = count_diff((uint8_t *)want, (uint8_t *)got, MEM_BYTES);
	for (uint32_t c = 0; c < MEM_BYTES / CHUNK; c++)
		if (memcmp((uint8_t *)want + c * CHUNK, (uint8_t *)got + c * CHUNK, CHUNK))
			list_add(&chunks, c);

	/* (b) what the device's own DMA engine reads out of it */
	memset(buf, 0, MEM_BYTES);
	result = one_shot(&d, DMA_CMD_FROM_DEV, 0, (uint64_t)buf, MEM_BYTES, r);
	if (result == (uint32_t)-1)
		return;
	dma_bad = count_diff((uint8_t *)want, buf, MEM_BYTES);

	j = j_begin(r);
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

/* The sender's P2P baseline; without one, a fresh device's (1, 0, 0). */
static bool p2p_load(const struct qdev *a, const char *peer, struct p2p_base *b, struct reply *r)
{
	*b = (struct p2p_base){ .first = 1 };
	if (!a->state->has_p2p)
		return true;
	*b = a->state->p2p;
	if (strcmp(b->peer, peer)) {
		reply_error(r, "p2p-start made %s send to %s, not to %s", a->bdf, b->peer, peer);
		return false;
	}
	return true;
}

static bool open_pair(struct qdev *a, struct qdev *b, const struct options *o, struct reply *r)
{
	if (!dev_open(a, o->bdf, "bdf", r) || !dev_open(b, o->peer, "peer", r))
		return false;
	if (!strcmp(a->bdf, b->bdf)) {
		reply_error(r, "--bdf and --peer are the same function");
		return false;
	}
	return true;
}

static void cmd_p2p_start(const struct options *o, struct reply *r)
{
	static const uint64_t zero[RX_SLOTS * REC_SIZE / 8];
	struct p2p_base base = { 0 };
	uint32_t ctrl_a, ctrl_b, st;
	struct qdev a, b;
	struct json j;
	uint64_t target;

	if (!open_pair(&a, &b, o, r))
		return;
	target = b.state->bar2 + RX_OFF;

	/* TARGET/SLOTS only take while TX is off; stop first, then clean the window. */
	ctrl_a = rd32(&a, REG_P2P_CTRL);
	if (ctrl_a & P2P_TX) {
		wr32(&a, REG_P2P_CTRL, ctrl_a & ~P2P_TX);
		if (rd32(&a, REG_P2P_CTRL) & P2P_TX)
			return reply_error(r, "%s: P2P TX does not turn off", a.bdf);
	}
	bar2_write(&b, RX_OFF, zero, sizeof(zero));
	ctrl_b = rd32(&b, REG_P2P_CTRL);
	wr32(&b, REG_P2P_CTRL, ctrl_b | P2P_RX);
	if (!(rd32(&b, REG_P2P_CTRL) & P2P_RX))
		return reply_error(r, "%s: P2P RX does not turn on (P2P_CTRL 0x%x, STATUS 0x%x)", b.bdf,
				   rd32(&b, REG_P2P_CTRL), rd32(&b, REG_STATUS));

	snprintf(base.peer, sizeof(base.peer), "%s", b.bdf);
	base.first = rd64(&a, REG_P2P_SEQ);
	base.sent0 = rd32(&a, REG_P2P_SENT);
	base.received0 = rd32(&b, REG_P2P_RECEIVED);
	a.state->p2p = base;
	a.state->has_p2p = true;

	wr32(&a, REG_INTERVAL_US, (uint32_t)o->interval_us);
	wr64(&a, REG_P2P_TARGET, target);
	wr32(&a, REG_P2P_SLOTS, (uint32_t)o->slots);
	if (rd64(&a, REG_P2P_TARGET) != target || rd32(&a, REG_P2P_SLOTS) != (uint32_t)o->slots)
		return reply_error(r, "%s: P2P_TARGET/P2P_SLOTS did not take 0x%lx/%ld", a.bdf,
				   (unsigned long)target, (long)o->slots);
	wr32(&a, REG_P2P_CTRL, (ctrl_a & P2P_RX) | P2P_TX | (uint32_t)o->path << P2P_PATH_SHIFT);
	st = wait_first_record(&a, REG_P2P_SEQ, base.first, ST_P2P_ERR, o->interval_us);
	if (st & ST_P2P_ERR)
		return reply_error(r, "%s: P2P to %s (0x%lx, path %s) failed: P2P_ERRORS %u, STATUS 0x%x%s",
				   a.bdf, b.bdf, (unsigned long)target, path_names[o->path],
				   rd32(&a, REG_P2P_ERRORS), st,
				   o->path == 1 ? " (path vfio needs QEMU to map the peer's BAR2)" : "");
	j = j_begin(r);
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
 * After TX is off, let the receiver's scan catch up, as qmigdev.c: until it counted
 * everything sent since p2p-start, or its count stood still for two of its periods
 * (10 ms at least each, 250 ms at least in all), or 5 s passed.
 */
static const char *wait_rx_settled(const struct qdev *a, const struct qdev *b,
				   const struct p2p_base *base)
{
	uint32_t iv = rd32(b, REG_INTERVAL_US), last = rd32(b, REG_P2P_RECEIVED);
	uint64_t quiet = 2ULL * (iv > 10000 ? iv : 10000) * 1000;
	uint64_t start = now_ns(), changed = start;

	if (quiet < 250000000ULL)
		quiet = 250000000ULL;
	for (;;) {
		uint32_t sent = rd32(a, REG_P2P_SENT), received = rd32(b, REG_P2P_RECEIVED);
		uint64_t now = now_ns();

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
		idle();
	}
}

static void cmd_p2p_verify(const struct options *o, struct reply *r)
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

	if (!open_pair(&a, &b, o, r) || !p2p_load(&a, b.bdf, &base, r))
		return;
	target = rd64(&a, REG_P2P_TARGET);
	if (target != b.state->bar2 + RX_OFF)
		return reply_error(r, "%s: P2P_TARGET 0x%lx is not %s's window 0x%lx", a.bdf,
				   (unsigned long)target, b.bdf, (unsigned long)(b.state->bar2 + RX_OFF));
	if (o->stop) {
		wr32(&a, REG_P2P_CTRL, rd32(&a, REG_P2P_CTRL) & ~P2P_TX);
		settled = wait_rx_settled(&a, &b, &base);
	}
	v.nslots = rd32(&a, REG_P2P_SLOTS);
	if (v.nslots < 1 || v.nslots > RX_SLOTS)
		return reply_error(r, "%s: P2P_SLOTS is %u", a.bdf, v.nslots);
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

	j = j_begin(r);
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

static void cmd_stop(const struct options *o, struct reply *r)
{
	uint32_t cont, p2p;
	struct qdev d;
	struct json j;

	if (!dev_open(&d, o->bdf, "bdf", r))
		return;
	cont = rd32(&d, REG_CONT_CTRL);
	p2p = rd32(&d, REG_P2P_CTRL);
	wr32(&d, REG_CONT_CTRL, 0);
	if (p2p & P2P_TX)
		wr32(&d, REG_P2P_CTRL, p2p & ~P2P_TX);
	j = j_begin(r);
	j_str(&j, "bdf", d.bdf);
	j_bool(&j, "cont_was_on", cont & CONT_EN);
	j_bool(&j, "p2p_tx_was_on", p2p & P2P_TX);
	j_u64(&j, "status", rd32(&d, REG_STATUS));
	j_end(&j);
}

/* ---------------------------------------------------------------- selftest */

/* The Linux agent's selftest (qmigdev_records.h), so the two builds are known to classify alike. */
static void cmd_selftest(const struct options *o, struct reply *r)
{
	struct selftest_failure f;
	struct record rec;
	uint64_t p1[1];
	struct json j;

	(void)o;
	if (!records_selftest(&f))
		return reply_error(r, "selftest: %s is %lu, expected %lu", f.what, (unsigned long)f.got,
				   (unsigned long)f.wanted);
	fill_pattern(p1, 1, 0x51ad);
	build_record(&rec, KIND_P2P, 0x1234, 0x0102030405060708ULL, 7, 2);
	j = j_begin(r);
	j_hex(&j, "crc_check", crc32_buf("123456789", 9));
	j_key(&j, "sample_record");
	reply_printf(r, "\"");
	for (int i = 0; i < REC_SIZE; i++)
		reply_printf(r, "%02x", ((const uint8_t *)&rec)[i]);
	reply_printf(r, "\"");
	j_hex(&j, "sample_crc", rec.crc);
	j_hex(&j, "pattern_0x51ad_word0", p1[0]);
	j_bool(&j, "ok_all", true);
	j_end(&j);
}

/* ---------------------------------------------------------------- options */

static bool ranged(const struct args *a, struct reply *r, const char *name, int64_t min,
		   int64_t max, int64_t *out)
{
	int64_t v = *out;

	if (!arg_number(a, r, name, &v))
		return false;
	if (arg_value(a, name) && (v < min || v > max)) {
		reply_error(r, "invalid value for --%s: '%s' (%ld..%ld)", name, arg_value(a, name),
			    (long)min, (long)max);
		return false;
	}
	*out = v;
	return true;
}

static bool parse_options(const struct args *a, struct reply *r, struct options *o)
{
	static const char *const known[] = { "bdf", "peer", "ring-kb", "interval-us", "slots",
					     "path", "seed", "stop", NULL };
	const char *bad = arg_unknown(a, known), *path = arg_value(a, "path");

	if (bad) {
		reply_error(r, "unknown or incomplete option '%s'", bad);
		return false;
	}
	o->bdf = arg_value(a, "bdf");
	o->peer = arg_value(a, "peer");
	o->stop = arg_flag(a, "stop");
	if (!ranged(a, r, "ring-kb", 1, RING_MAX / 1024, &o->ring_kb) ||
	    !ranged(a, r, "interval-us", INTERVAL_MIN_US, INTERVAL_MAX_US, &o->interval_us) ||
	    !ranged(a, r, "slots", 1, RX_SLOTS, &o->slots))
		return false;
	if (path) {
		o->path = -1;
		for (int64_t i = 0; i < 3; i++)
			if (!strcmp(path, path_names[i]))
				o->path = i;
		if (o->path < 0) {
			reply_error(r, "invalid --path '%s' (auto|vfio|direct)", path);
			return false;
		}
	}
	return arg_unsigned(a, r, "seed", &o->seed, &o->has_seed);
}

static void qmigdev_command(const struct args *a, struct reply *r)
{
	static const struct {
		const char *name;
		void (*run)(const struct options *, struct reply *);
		bool p2p;	/* takes the P2P defaults */
	} commands[] = {
		{ "list", cmd_list, false }, { "status", cmd_status, false },
		{ "dma-start", cmd_dma_start, false }, { "dma-verify", cmd_dma_verify, false },
		{ "mem-fill", cmd_mem_fill, false }, { "mem-check", cmd_mem_check, false },
		{ "p2p-start", cmd_p2p_start, true }, { "p2p-verify", cmd_p2p_verify, true },
		{ "stop", cmd_stop, false }, { "selftest", cmd_selftest, false },
	};
	struct options o = { .ring_kb = RING_MAX / 1024, .interval_us = -1, .slots = RX_SLOTS,
			     .path = 1 };

	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(a->argv[1], commands[i].name))
			continue;
		if (!parse_options(a, r, &o))
			return;
		if (o.interval_us < 0)
			o.interval_us = commands[i].p2p ? 20000 : 10000;
		commands[i].run(&o, r);
		return;
	}
	reply_error(r, "unknown command '%s' (list|status|dma-start|dma-verify|mem-fill|"
		    "mem-check|p2p-start|p2p-verify|stop)", a->argv[1]);
}

const struct agent qmigdev_agent = { "qmigdev", qmigdev_command, NULL };
