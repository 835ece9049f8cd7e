/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The edu's registers, and the edu agent's records as the guest checks them:
 * their layout, their CRC, the factorial the device computes, and the classifier
 * that gives every ring slot one class.  Shared by the Linux agent (edu.c) and the micro guest's
 * (micro/agent_edu.c), so both judge a slot by the same rules; the rules and
 * the edu facts are described at the top of edu.c.
 *
 * Header-only (static functions); needs memcmp/memset and snprintf.
 */
#ifndef QMP_MIG_EDU_RECORDS_H
#define QMP_MIG_EDU_RECORDS_H

/* The edu's registers (QEMU hw/misc/edu.c) */
enum {
	EDU_ID = 0x00, EDU_LIVENESS = 0x04, EDU_FACT = 0x08, EDU_STATUS = 0x20,
	EDU_IRQ_STATUS = 0x24, EDU_IRQ_ACK = 0x64, EDU_DMA_SRC = 0x80,
	EDU_DMA_DST = 0x88, EDU_DMA_CNT = 0x90, EDU_DMA_CMD = 0x98,
};
#define EDU_ID_VALUE 0x010000ed
#define EDU_COMPUTING 0x01
#define EDU_IRQFACT 0x80
#define EDU_RUN 0x1
#define EDU_TO_RAM 0x2
#define EDU_BUF 0x40000
#define EDU_BUF_BYTES 4096

#define LIST_MAX 16			/* entries kept per reported list */

#define REC_SIZE 64
#define REC_MAGIC 0x43455245		/* "EREC" */
#define REC_CRC_LEN 60
#define CHUNKS (EDU_BUF_BYTES / REC_SIZE)
#define WRITER_CHUNKS (CHUNKS / 2)	/* the rest hold resident records */
#define RESIDENT_SEQ (1ULL << 62)	/* seq of resident record 0 */
#define MAX_SLOTS 64

struct rec {
	uint32_t magic;
	uint32_t slot;
	uint64_t seq;
	uint64_t time_ns;
	uint8_t fill[36];
	uint32_t crc;
};
_Static_assert(sizeof(struct rec) == REC_SIZE, "record layout");

struct list {
	unsigned len;
	uint64_t v[LIST_MAX];
};

static void list_add(struct list *l, uint64_t v)
{
	if (l->len < LIST_MAX)
		l->v[l->len++] = v;
}

/* zlib's CRC-32, bit by bit: the records are short and few. */
static uint32_t crc32z(const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint32_t c = 0xffffffffu;

	while (len--) {
		c ^= *p++;
		for (int bit = 0; bit < 8; bit++)
			c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
	}
	return ~c;
}

/* n! in the device's wrapping u32 arithmetic. */
static uint32_t fact_u32(uint32_t n)
{
	uint32_t r = 1;

	for (; n > 1; n--)
		r *= n;
	return r;
}

static void rec_build(struct rec *r, uint64_t seq, uint32_t slot, uint64_t time_ns)
{
	r->magic = REC_MAGIC;
	r->slot = slot;
	r->seq = seq;
	r->time_ns = time_ns;
	for (unsigned i = 0; i < sizeof(r->fill); i++)
		r->fill[i] = (uint8_t)(seq + i);
	r->crc = crc32z(r, REC_CRC_LEN);
}

static bool rec_zero(const struct rec *r)
{
	static const struct rec zero;

	return !memcmp(r, &zero, sizeof(zero));
}

static bool rec_valid(const struct rec *r)
{
	if (r->magic != REC_MAGIC || r->crc != crc32z(r, REC_CRC_LEN))
		return false;
	for (unsigned i = 0; i < sizeof(r->fill); i++)
		if (r->fill[i] != (uint8_t)(r->seq + i))
			return false;
	return true;
}

/* ---------------------------------------------------------------- classes */

enum kind { K_EMPTY, K_OK, K_LOST, K_TORN, K_FUTURE, K_FOREIGN, K_N };
static const char *const kind_names[K_N] = {
	"empty", "ok", "lost", "torn", "future", "foreign",
};

struct tally {
	uint64_t n[K_N];
	struct list lost_seqs, torn_slots, future_seqs;
};

/* Newest seq <= last that goes to slot k of an n-slot ring; 0 if none. */
static uint64_t due_seq(uint64_t last, uint32_t n, uint32_t k)
{
	if (last < (uint64_t)k + 1)
		return 0;
	return k + 1 + (last - k - 1) / n * n;
}

/*
 * One slot, with the writer's counter read before (last0) and after
 * (last1) the copy: seqs last0+1 .. last1+1 may have landed meanwhile.
 */
static enum kind classify(const struct rec *r, uint32_t k, uint32_t n,
			  uint64_t last0, uint64_t last1, uint64_t *due)
{
	*due = due_seq(last0, n, k);
	if (rec_zero(r))
		return *due ? K_LOST : K_EMPTY;
	if (!rec_valid(r))
		return K_TORN;
	if (r->seq > last1 + 1)
		return K_FUTURE;
	if (!r->seq || (r->seq - 1) % n != k || r->slot != k)
		return K_FOREIGN;
	if (r->seq == *due || r->seq > last0)
		return K_OK;
	return K_LOST;		/* an older record is still there */
}

static void scan(const struct rec *ring, uint32_t n, uint64_t last0,
		 uint64_t last1, struct tally *t)
{
	for (uint32_t k = 0; k < n; k++) {
		uint64_t due;
		enum kind c = classify(&ring[k], k, n, last0, last1, &due);

		t->n[c]++;
		if (c == K_LOST)
			list_add(&t->lost_seqs, due);
		else if (c == K_TORN)
			list_add(&t->torn_slots, k);
		else if (c == K_FUTURE)
			list_add(&t->future_seqs, ring[k].seq);
	}
}

/*
 * The selftest's checks, without a device: the CRC-32 against zlib's check
 * values, the factorial, and the classifier on synthetic rings.  False when one
 * differed; *why then says which (a static buffer).
 */
static bool edu_selftest_expect(const char **why, const char *what, uint64_t got, uint64_t want)
{
	static char text[160];

	if (got != want && !*why) {
		snprintf(text, sizeof(text), "%s is %lu, expected %lu", what, (unsigned long)got,
			 (unsigned long)want);
		*why = text;
	}
	return got == want;
}

static bool edu_selftest_tally(const char **why, const char *ring, const struct tally *t,
			       const uint64_t want[K_N])
{
	static char text[160];

	for (int c = 0; c < K_N; c++) {
		if (t->n[c] != want[c] && !*why) {
			snprintf(text, sizeof(text), "%s ring has %lu %s slots, expected %lu", ring,
				 (unsigned long)t->n[c], kind_names[c], (unsigned long)want[c]);
			*why = text;
		}
		if (t->n[c] != want[c])
			return false;
	}
	return true;
}

/* Seqs lo..hi into an n-slot ring, each in its own slot. */
static void fill_ring(struct rec *ring, uint32_t n, uint64_t lo, uint64_t hi)
{
	for (uint64_t seq = lo; seq <= hi; seq++)
		rec_build(&ring[(seq - 1) % n], seq, (uint32_t)((seq - 1) % n), seq * 1000);
}

static bool edu_selftest(const char **why)
{
	static const char fox[] = "The quick brown fox jumps over the lazy dog";
	static struct rec ring[8];
	struct tally t;
	bool ok = true;

	*why = NULL;
	ok &= edu_selftest_expect(why, "crc32(\"123456789\")", crc32z("123456789", 9), 0xcbf43926);
	ok &= edu_selftest_expect(why, "crc32(\"\")", crc32z("", 0), 0);
	ok &= edu_selftest_expect(why, "crc32(fox)", crc32z(fox, sizeof(fox) - 1), 0x414fa339);
	ok &= edu_selftest_expect(why, "13!", fact_u32(13), 1932053504);
	ok &= edu_selftest_expect(why, "34!", fact_u32(34), 0);
	ok &= edu_selftest_expect(why, "due(70, 64, 5)", due_seq(70, 64, 5), 70);
	ok &= edu_selftest_expect(why, "due(70, 64, 6)", due_seq(70, 64, 6), 7);
	ok &= edu_selftest_expect(why, "due(5, 64, 5)", due_seq(5, 64, 5), 0);

	/* Wrapped ring, seqs 1..11 in 8 slots: all ok. */
	memset(ring, 0, sizeof(ring));
	fill_ring(ring, 8, 1, 11);
	t = (struct tally){ 0 };
	scan(ring, 8, 11, 11, &t);
	ok &= edu_selftest_tally(why, "clean", &t, (const uint64_t[K_N]){ [K_OK] = 8 });

	/* One of each: seq 12 in flight (slot 3), slot 0 still seq 1, slot 1 zero. */
	fill_ring(ring, 8, 12, 12);
	rec_build(&ring[0], 1, 0, 1);
	memset(&ring[1], 0, REC_SIZE);
	rec_build(&ring[4], 13, 4, 13);			/* future */
	ring[5].fill[7] ^= 0x10;			/* torn */
	rec_build(&ring[6], 6, 5, 6);			/* slot 5's record, in 6 */
	t = (struct tally){ 0 };
	scan(ring, 8, 11, 11, &t);
	ok &= edu_selftest_tally(why, "damaged", &t, (const uint64_t[K_N]){
		[K_OK] = 3, [K_LOST] = 2, [K_TORN] = 1, [K_FUTURE] = 1, [K_FOREIGN] = 1 });
	ok &= edu_selftest_expect(why, "first lost seq", t.lost_seqs.v[0], 9);
	ok &= edu_selftest_expect(why, "second lost seq", t.lost_seqs.v[1], 10);
	ok &= edu_selftest_expect(why, "torn slot", t.torn_slots.v[0], 5);
	ok &= edu_selftest_expect(why, "future seq", t.future_seqs.v[0], 13);

	/* Not wrapped, done 3 before the copy and 4 after: 5 is in flight, 7 is not. */
	memset(ring, 0, sizeof(ring));
	fill_ring(ring, 8, 1, 5);
	rec_build(&ring[6], 7, 6, 7);
	t = (struct tally){ 0 };
	scan(ring, 8, 3, 4, &t);
	ok &= edu_selftest_tally(why, "in flight", &t, (const uint64_t[K_N]){
		[K_OK] = 5, [K_EMPTY] = 2, [K_FUTURE] = 1 });
	return ok;
}

#endif
