// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * memcheck on the micro guest: guest_agents/memcheck.c's commands, pattern and
 * answers, without a daemon.  The region is [region_base, region_base + size);
 * the main loop's ticks rewrite its first pages, generation after generation,
 * in place of the daemon's loop.  The pattern is the same function of (seed,
 * page, generation, word), so a page is right or wrong by the same rule.
 *
 *   start --size-mb N --dirty-mb M [--rate-mb R] [--timeout S]
 *   status | verify | gpa --page P | stop
 *
 * There is no process: "pid" is always 1, "alive" is whether the region is
 * being rewritten.
 */
#include "micro.h"

#define PAGE_WORDS (PAGE_SIZE / sizeof(uint64_t))
#define MAX_REPORTED_PAGES 64
#define MAX_PAGES (1024 * MIB / PAGE_SIZE)	/* the generation table's size */
#define PID 1
/* Paced pages are written in bursts when the timer wakes the guest; a longer lag than this is
 * not made up. */
#define CATCH_UP_NS 20000000ULL

enum phase { IDLE, RUNNING, DONE, STOPPED };
static const char *const phase_names[] = { "none", "running", "done", "stopped" };

static struct {
	enum phase phase;
	uint64_t *mem;
	uint64_t pages, dirty_pages, seed, rewrites;
	uint64_t next;		/* next page to rewrite */
	uint64_t page_ns;	/* paced: a page every page_ns; 0: flat out */
	uint64_t due;		/* when the next page is due */
} region;
static uint32_t generation[MAX_PAGES];	/* last generation written, per page */

/* As memcheck.c: each (page, generation) its own splitmix64 stream. */
static uint64_t page_stream_seed(uint64_t seed, uint64_t page, uint32_t gen)
{
	return mix64(mix64(mix64(seed) ^ page) ^ gen);
}

static uint64_t pattern_word(uint64_t stream_seed, uint64_t w)
{
	return mix64(stream_seed + (w + 1) * 0x9e3779b97f4a7c15ULL);
}

static uint64_t *page_addr(uint64_t page)
{
	return region.mem + page * PAGE_WORDS;
}

static void write_page(uint64_t page, uint32_t gen)
{
	uint64_t s = page_stream_seed(region.seed, page, gen), *dst = page_addr(page);

	for (uint64_t w = 0; w < PAGE_WORDS; w++)
		dst[w] = pattern_word(s, w);
}

static bool option_errors(const struct args *a, struct reply *r)
{
	static const char *const known[] = { "size-mb", "dirty-mb", "rate-mb", "page", "timeout",
					     "state", NULL };
	const char *bad = arg_unknown(a, known);

	if (bad)
		reply_error(r, "unknown or incomplete option '%s'", bad);
	return bad != NULL;
}

static void cmd_start(const struct args *a, struct reply *r)
{
	int64_t size_mb = -1, dirty_mb = -1, rate_mb = 0;
	uint64_t available = (ram_top - region_base) / MIB;

	if (!arg_number(a, r, "size-mb", &size_mb) || !arg_number(a, r, "dirty-mb", &dirty_mb) ||
	    !arg_number(a, r, "rate-mb", &rate_mb))
		return;
	if (size_mb <= 0)
		return reply_error(r, "start needs --size-mb N with N > 0");
	if (dirty_mb < 0 || dirty_mb > size_mb)
		return reply_error(r, "start needs --dirty-mb M with 0 <= M <= size-mb (%ld)", (long)size_mb);
	if (rate_mb < 0)
		return reply_error(r, "--rate-mb must be >= 0 (0: rewrite as fast as the vCPU allows)");
	if ((uint64_t)size_mb > available || (uint64_t)size_mb * MIB / PAGE_SIZE > MAX_PAGES)
		return reply_error(r, "--size-mb %ld does not fit: the micro guest has %lu MiB for the "
				   "region", (long)size_mb, (unsigned long)available);
	if (region.phase == RUNNING)
		return reply_error(r, "a daemon is already running (pid %d); stop or verify it first", PID);
	region.mem = (uint64_t *)region_base;
	region.pages = (uint64_t)size_mb * MIB / PAGE_SIZE;
	region.dirty_pages = (uint64_t)dirty_mb * MIB / PAGE_SIZE;
	region.seed = mix64(now_ns() ^ mix64(__builtin_ia32_rdtsc()));
	region.rewrites = region.next = 0;
	/* memcheck paces whole passes over the dirty pages; pacing each page is the same rate. */
	region.page_ns = rate_mb > 0 ? PAGE_SIZE * 1000000000ULL / ((uint64_t)rate_mb * MIB) : 0;
	memset(generation, 0, region.pages * sizeof(generation[0]));
	for (uint64_t p = 0; p < region.pages; p++)
		write_page(p, 0);
	region.due = now_ns();
	region.phase = RUNNING;
	reply_printf(r, "{\"pid\":%d,\"pages\":%lu,\"dirty_pages\":%lu,\"size_mb\":%ld,\"rate_mb\":%ld}",
		     PID, (unsigned long)region.pages, (unsigned long)region.dirty_pages,
		     (long)size_mb, (long)rate_mb);
}

static bool tick(uint64_t now)
{
	if (region.phase != RUNNING || region.dirty_pages == 0)
		return false;
	if (region.page_ns && now < region.due)
		return false;
	write_page(region.next, generation[region.next] + 1);
	generation[region.next]++;
	region.rewrites++;
	if (++region.next == region.dirty_pages)
		region.next = 0;
	if (region.page_ns) {
		region.due += region.page_ns;
		if (region.due + CATCH_UP_NS < now)	/* a slow vCPU does not bank credit */
			region.due = now;
	}
	return region.page_ns == 0 || region.due <= now;
}

static bool started(struct reply *r)
{
	if (region.phase == IDLE)
		reply_error(r, "no daemon started (run 'start' first)");
	return region.phase != IDLE;
}

static bool running(struct reply *r)
{
	if (started(r) && region.phase != RUNNING)
		reply_error(r, "daemon (pid %d) is not running", PID);
	return region.phase == RUNNING;
}

static void cmd_status(const struct args *a, struct reply *r)
{
	(void)a;
	if (started(r))
		reply_printf(r, "{\"pid\":%d,\"alive\":%s,\"rewrites\":%lu,\"phase\":\"%s\"}", PID,
			     region.phase == RUNNING ? "true" : "false",
			     (unsigned long)region.rewrites, phase_names[region.phase]);
}

static void cmd_verify(const struct args *a, struct reply *r)
{
	uint64_t bad_pages = 0;

	(void)a;
	if (!running(r))
		return;
	region.phase = DONE;
	reply_printf(r, "{\"pages\":%lu,", (unsigned long)region.pages);
	/* The bad pages are listed first, counted as they go; the count follows them. */
	reply_printf(r, "\"bad\":[");
	for (uint64_t p = 0; p < region.pages; p++) {
		uint64_t s = page_stream_seed(region.seed, p, generation[p]), *src = page_addr(p);
		unsigned bad_words = 0, first_bad = 0;
		uint64_t expected = 0, actual = 0;

		for (uint64_t w = 0; w < PAGE_WORDS; w++) {
			uint64_t want = pattern_word(s, w);

			if (src[w] == want)
				continue;
			if (bad_words++ == 0)
				first_bad = (unsigned)w, expected = want, actual = src[w];
		}
		if (!bad_words || bad_pages++ >= MAX_REPORTED_PAGES)
			continue;
		reply_printf(r, "%s{\"page\":%lu,\"gpa\":\"0x%lx\",\"offset\":%u,\"expected\":\"0x%016lx\","
			     "\"actual\":\"0x%016lx\",\"bad_words\":%u}", bad_pages == 1 ? "" : ",",
			     (unsigned long)p, (unsigned long)(uint64_t)page_addr(p),
			     first_bad * (unsigned)sizeof(uint64_t), (unsigned long)expected,
			     (unsigned long)actual, bad_words);
	}
	reply_printf(r, "],\"bad_pages\":%lu,\"rewrites\":%lu}", (unsigned long)bad_pages,
		     (unsigned long)region.rewrites);
}

static void cmd_gpa(const struct args *a, struct reply *r)
{
	int64_t page = -1;
	uint64_t address;

	if (!arg_number(a, r, "page", &page))
		return;
	if (page < 0)
		return reply_error(r, "gpa needs --page P with P >= 0");
	if (!running(r))
		return;
	if ((uint64_t)page >= region.pages)
		return reply_error(r, "page %ld out of range: the region has %lu pages", (long)page,
				   (unsigned long)region.pages);
	/* Identity-mapped: the guest-virtual address is the guest-physical one. */
	address = (uint64_t)page_addr((uint64_t)page);
	reply_printf(r, "{\"page\":%ld,\"gva\":\"0x%lx\",\"gpa\":\"0x%lx\",\"dirty\":%s}", (long)page,
		     (unsigned long)address, (unsigned long)address,
		     (uint64_t)page < region.dirty_pages ? "true" : "false");
}

static void cmd_stop(const struct args *a, struct reply *r)
{
	(void)a;
	if (!running(r))
		return;
	region.phase = STOPPED;
	reply_printf(r, "{\"pid\":%d,\"stopped\":true}", PID);
}

static void command(const struct args *a, struct reply *r)
{
	static const struct {
		const char *name;
		void (*run)(const struct args *, struct reply *);
	} commands[] = {
		{ "start", cmd_start }, { "status", cmd_status }, { "verify", cmd_verify },
		{ "gpa", cmd_gpa }, { "stop", cmd_stop },
	};

	if (option_errors(a, r))
		return;
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(a->argv[1], commands[i].name))
			return commands[i].run(a, r);
	reply_error(r, "unknown command '%s' (start|status|verify|gpa|stop)", a->argv[1]);
}

const struct agent memcheck_agent = { "memcheck", command, tick };
