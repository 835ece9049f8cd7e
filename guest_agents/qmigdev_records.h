/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * qmigdev's records as the guest checks them: the layout the device writes, its
 * CRC, the device-memory pattern, and the classifier that gives every ring or
 * window slot one class.  Shared by the Linux agent (qmigdev.c) and the micro
 * guest's (micro/agent_qmigdev.c), so both judge a slot by the same rules; the
 * rules themselves are described at the top of qmigdev.c.
 *
 * Header-only (static functions).  Needs memset/memcmp, and, for j_list and
 * j_view, the includer's JSON emitters: struct json, j_key, j_u64, j_bool,
 * j_null, j_open and j_close (qmigdev.c's signatures), declared before the
 * #include.
 */
#ifndef QMP_MIG_QMIGDEV_RECORDS_H
#define QMP_MIG_QMIGDEV_RECORDS_H

#define REC_SIZE 64
#define REC_MAGIC 0x43455251		/* "QREC" */
#define REC_CRC_LEN 60
#define KIND_CONT 1
#define KIND_P2P 2
#define LIST_MAX 16			/* entries kept per reported list */

struct record {
	uint32_t magic;
	uint16_t kind;
	uint16_t src;
	uint64_t seq;
	uint64_t time_ns;
	uint32_t mig_state;
	uint32_t slot;
	uint8_t fill[28];
	uint32_t crc;
};	/* every field is naturally aligned: no padding, 8-byte aligned */
_Static_assert(sizeof(struct record) == REC_SIZE, "record layout");

/* zlib's CRC-32 (reflected polynomial 0xedb88320), as the device computes it. */
static uint32_t crc32_buf(const void *buf, size_t len)
{
	static uint32_t table[256];
	const uint8_t *p = buf;
	uint32_t c = ~0u;

	if (!table[1]) {
		for (uint32_t n = 0; n < 256; n++) {
			uint32_t v = n;

			for (int k = 0; k < 8; k++)
				v = v & 1 ? 0xedb88320u ^ (v >> 1) : v >> 1;
			table[n] = v;
		}
	}
	while (len--)
		c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
	return ~c;
}

/*
 * Device-memory pattern of a seed: a xorshift64 stream.  The seed goes through a
 * splitmix64 step first, so nearby seeds give unrelated streams and seed 0 does
 * not give xorshift's all-zero fixed point.
 */
static void fill_pattern(uint64_t *dst, size_t words, uint64_t seed)
{
	uint64_t x = seed + 0x9e3779b97f4a7c15ULL;

	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	x ^= x >> 31;
	if (!x)
		x = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i < words; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		dst[i] = x;
	}
}

static bool running_state(uint32_t s)
{
	return s == 2 || s == 5 || s == 6 || s == 7;
}

static bool quiesced_state(uint32_t s)
{
	return s == 5 || s == 7;
}

enum cls { C_EMPTY, C_OK, C_LOST, C_TORN, C_FUTURE, C_FOREIGN, C_NCLS };
static const char *const cls_names[C_NCLS] = {
	"empty", "ok", "lost", "torn", "future", "foreign",
};

struct seqlist {
	unsigned n;
	uint64_t v[LIST_MAX];
};

static void list_add(struct seqlist *l, uint64_t v)
{
	if (l->n < LIST_MAX)
		l->v[l->n++] = v;
}

/* What a ring or window should hold, and what was found in it. */
struct view {
	const struct record *rec;	/* local copy of the slots */
	uint32_t nslots;
	uint16_t kind, src;
	uint64_t first;		/* lowest seq this run of the writer produced */
	uint64_t next1, next2;	/* writer's next seq before / after the copy */
	/* results */
	uint64_t count[C_NCLS];
	uint64_t expected, stopped, quiesced;
	struct seqlist lost_seqs, torn_slots, future_seqs, foreign_slots;
	struct seqlist stopped_seqs, quiesced_seqs;
	uint64_t oldest_seq, oldest_time, newest_seq, newest_time;
};

/*
 * The seq that must be in slot i given the writer's next seq before the
 * copy (0: none).  Seqs max(first, next-nslots, 1) .. next-1 have been
 * written, seq s into slot (s-1) mod nslots.
 */
static uint64_t expected_seq(const struct view *v, uint32_t i)
{
	uint64_t last = v->next1 - 1, lo, s;

	if (v->next1 <= 1 || i >= last)
		return 0;
	s = last - (last - 1 - i) % v->nslots;
	lo = v->next1 > v->nslots ? v->next1 - v->nslots : 1;
	if (lo < v->first)
		lo = v->first;
	return s >= lo ? s : 0;
}

static bool record_zero(const struct record *r)
{
	const uint64_t *w = (const uint64_t *)r;

	for (int i = 0; i < REC_SIZE / 8; i++)
		if (w[i])
			return false;
	return true;
}

/* Whole and as the device builds it: magic, CRC and fill all agree. */
static bool record_intact(const struct record *r)
{
	if (r->magic != REC_MAGIC || crc32_buf(r, REC_CRC_LEN) != r->crc)
		return false;
	for (unsigned i = 0; i < sizeof(r->fill); i++)
		if (r->fill[i] != (uint8_t)(r->seq + i))
			return false;
	return true;
}

/*
 * Give every slot one class.  A copy taken while the writer runs may hold,
 * in some slots, seqs in [next1, next2) that were written during the copy:
 * those are fine.  "stopped" and "quiesced" are counted over every intact
 * record of this writer, whatever its class.
 */
static void classify(struct view *v)
{
	for (uint32_t i = 0; i < v->nslots; i++) {
		const struct record *r = &v->rec[i];
		uint64_t e = expected_seq(v, i), seq = r->seq;
		enum cls c;

		v->expected += e != 0;
		if (record_zero(r)) {
			c = e ? C_LOST : C_EMPTY;
			if (e)
				list_add(&v->lost_seqs, e);
		} else if (!record_intact(r)) {
			c = C_TORN;
			list_add(&v->torn_slots, i);
		} else if (r->kind != v->kind || r->src != v->src) {
			c = C_FOREIGN;
			list_add(&v->foreign_slots, i);
		} else {
			if (!running_state(r->mig_state)) {
				v->stopped++;
				list_add(&v->stopped_seqs, seq);
			}
			if (quiesced_state(r->mig_state)) {
				v->quiesced++;
				list_add(&v->quiesced_seqs, seq);
			}
			if (seq >= v->next2) {
				c = C_FUTURE;
				list_add(&v->future_seqs, seq);
			} else if (!seq || (seq - 1) % v->nslots != i || r->slot != i ||
				   (!e && seq < v->next1)) {
				/* wrong slot, or older than anything still expected */
				c = C_FOREIGN;
				list_add(&v->foreign_slots, i);
			} else if (e && seq < e) {
				c = C_LOST;	/* the slot still holds an older record */
				list_add(&v->lost_seqs, e);
			} else {
				c = C_OK;
				if (!v->oldest_seq || seq < v->oldest_seq) {
					v->oldest_seq = seq;
					v->oldest_time = r->time_ns;
				}
				if (seq > v->newest_seq) {
					v->newest_seq = seq;
					v->newest_time = r->time_ns;
				}
			}
		}
		v->count[c]++;
	}
}

static bool view_clean(const struct view *v)
{
	return v->expected > 0 && !v->count[C_LOST] && !v->count[C_TORN] &&
	       !v->count[C_FUTURE] && !v->count[C_FOREIGN] && !v->stopped;
}

static void j_list(struct json *j, const char *k, const struct seqlist *l)
{
	j_open(j, k, '[');
	for (unsigned i = 0; i < l->n; i++)
		j_u64(j, NULL, l->v[i]);
	j_close(j, ']');
}

static void j_view(struct json *j, const struct view *v)
{
	j_u64(j, "slots", v->nslots);
	j_u64(j, "expected", v->expected);
	for (int c = 0; c < C_NCLS; c++)
		j_u64(j, cls_names[c], v->count[c]);
	j_u64(j, "stopped", v->stopped);
	j_u64(j, "in_flight", v->next2 - v->next1);
	j_bool(j, "wrapped", v->next1 > v->first && v->next1 - v->first > v->nslots);
	j_list(j, "lost_seqs", &v->lost_seqs);
	j_list(j, "torn_slots", &v->torn_slots);
	j_list(j, "future_seqs", &v->future_seqs);
	j_list(j, "foreign_slots", &v->foreign_slots);
	j_list(j, "stopped_seqs", &v->stopped_seqs);
	if (v->oldest_seq) {
		j_u64(j, "oldest_seq", v->oldest_seq);
		j_u64(j, "oldest_time_ns", v->oldest_time);
		j_u64(j, "newest_seq", v->newest_seq);
		j_u64(j, "newest_time_ns", v->newest_time);
	} else {
		j_null(j, "oldest_seq");
		j_null(j, "newest_seq");
	}
}

/* A record exactly as the device's qmig_build_record() makes it. */
static void build_record(struct record *r, uint16_t kind, uint16_t src,
			 uint64_t seq, uint32_t slot, uint32_t state)
{
	memset(r, 0, sizeof(*r));
	r->magic = REC_MAGIC;
	r->kind = kind;
	r->src = src;
	r->seq = seq;
	r->time_ns = 1700000000000000000ULL + seq;
	r->mig_state = state;
	r->slot = slot;
	for (unsigned i = 0; i < sizeof(r->fill); i++)
		r->fill[i] = (uint8_t)(seq + i);
	r->crc = crc32_buf(r, REC_CRC_LEN);
}

/*
 * The selftest's checks, without a device: CRC-32 against zlib's check value,
 * the classifier on a synthetic 8-slot ring that wrapped (seqs 1..11), and the
 * pattern.  False when one differed: the first is in *f.
 */
struct selftest_failure {
	const char *what;
	uint64_t got, wanted;
};

static bool selftest_expect(struct selftest_failure *f, const char *what, uint64_t got,
			    uint64_t wanted)
{
	if (got != wanted && !f->what)
		*f = (struct selftest_failure){ what, got, wanted };
	return got == wanted;
}

static bool records_selftest(struct selftest_failure *f)
{
	static struct record ring[8];
	struct view v = { .rec = ring, .nslots = 8, .kind = KIND_CONT, .src = 0x42,
			  .first = 1, .next1 = 12, .next2 = 12 };
	uint64_t p1[4], p2[4], p3[4];
	bool ok;

	*f = (struct selftest_failure){ 0 };
	ok = selftest_expect(f, "crc32(\"123456789\")", crc32_buf("123456789", 9), 0xcbf43926);
	for (uint64_t s = 1; s <= 11; s++)
		build_record(&ring[(s - 1) % 8], KIND_CONT, 0x42, s, (uint32_t)(s - 1) % 8, 2);
	classify(&v);
	ok &= selftest_expect(f, "ok (clean ring)", v.count[C_OK], 8) &
	      selftest_expect(f, "expected (clean ring)", v.expected, 8) &
	      selftest_expect(f, "oldest_seq", v.oldest_seq, 4) &
	      selftest_expect(f, "newest_seq", v.newest_seq, 11);

	build_record(&ring[0], KIND_CONT, 0x42, 1, 0, 2);	/* older seq: 9 lost */
	memset(&ring[2], 0, REC_SIZE);				/* seq 11 lost */
	ring[3].fill[5] ^= 1;					/* torn */
	build_record(&ring[4], KIND_CONT, 0x42, 13, 4, 2);	/* future */
	build_record(&ring[5], KIND_CONT, 0x42, 6, 5, 1);	/* ok, but in STOP */
	build_record(&ring[7], KIND_CONT, 0x43, 8, 7, 2);	/* other writer */
	v = (struct view){ .rec = ring, .nslots = 8, .kind = KIND_CONT, .src = 0x42,
			   .first = 1, .next1 = 12, .next2 = 12 };
	classify(&v);
	ok &= selftest_expect(f, "ok", v.count[C_OK], 3) &
	      selftest_expect(f, "lost", v.count[C_LOST], 2) &
	      selftest_expect(f, "torn", v.count[C_TORN], 1) &
	      selftest_expect(f, "future", v.count[C_FUTURE], 1) &
	      selftest_expect(f, "foreign", v.count[C_FOREIGN], 1) &
	      selftest_expect(f, "stopped", v.stopped, 1) &
	      selftest_expect(f, "first lost seq", v.lost_seqs.v[0], 9) &
	      selftest_expect(f, "second lost seq", v.lost_seqs.v[1], 11);

	/* Not wrapped, with one record written during the copy (seq 5). */
	memset(ring, 0, sizeof(ring));
	for (uint64_t s = 1; s <= 5; s++)
		build_record(&ring[s - 1], KIND_CONT, 0x42, s, (uint32_t)s - 1, 6);
	v = (struct view){ .rec = ring, .nslots = 8, .kind = KIND_CONT, .src = 0x42,
			   .first = 1, .next1 = 5, .next2 = 6 };
	classify(&v);
	ok &= selftest_expect(f, "ok (in flight)", v.count[C_OK], 5) &
	      selftest_expect(f, "empty (in flight)", v.count[C_EMPTY], 3) &
	      selftest_expect(f, "expected (in flight)", v.expected, 4);

	fill_pattern(p1, 4, 0x51ad);
	fill_pattern(p2, 4, 0x51ad);
	fill_pattern(p3, 4, 0x51ae);
	ok &= selftest_expect(f, "pattern repeatable", !memcmp(p1, p2, sizeof(p1)), 1) &
	      selftest_expect(f, "pattern seed-dependent", !memcmp(p1, p3, sizeof(p1)), 0);
	return ok;
}

#endif
