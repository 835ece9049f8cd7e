// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qmp-mig-memcheck: guest memory-integrity agent for qmp-mig.
 *
 * A daemon fills a locked anonymous region with a per-page pattern that is a
 * deterministic function of (seed, page, generation, word) and keeps
 * rewriting the first part of it with new generations, so a live migration
 * has to chase dirty pages.  On "verify" the daemon stops writing and checks
 * every page against the generation it recorded, naming each bad page by its
 * index and guest-physical address.  Every command prints one line of JSON.
 *
 *   start --size-mb N --dirty-mb M [--rate-mb R] [--state DIR] [--timeout S]
 *   status [--state DIR]
 *   verify [--state DIR] [--timeout S]
 *   gpa --page P [--state DIR]
 *   stop [--state DIR] [--timeout S]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define PAGE_SIZE 4096UL
#define PAGE_WORDS (PAGE_SIZE / sizeof(uint64_t))
#define MIB (1024UL * 1024UL)
#define MAX_REPORTED_PAGES 64
#define DEFAULT_STATE_DIR "/run/qmp-mig-memcheck"
#define POLL_INTERVAL_NS 10000000L /* 10 ms */

#define PAGEMAP_PRESENT (1ULL << 63)
#define PAGEMAP_PFN_MASK ((1ULL << 55) - 1)

/* Daemon life cycle, published in the shared control file. */
enum phase {
	PHASE_STARTING = 0,
	PHASE_RUNNING,
	PHASE_VERIFYING,
	PHASE_DONE,
	PHASE_FAILED,
	PHASE_STOPPED,		/* killed by "stop" */
};

static const char *const phase_names[] = {
	"starting", "running", "verifying", "done", "failed", "stopped",
};

/*
 * DIR/control: a small file the daemon keeps MAP_SHARED, so the rewrite
 * counter costs one store per page and any command can read it at any time.
 */
struct control {
	uint64_t rewrites;
	uint32_t phase;
	uint32_t reserved;
	char error[256];
};

struct options {
	const char *state_dir;
	long size_mb;
	long dirty_mb;
	long rate_mb;
	long page;
	long timeout_s;
};

/* What the daemon records in DIR/state.json for the other commands. */
struct daemon_state {
	long pid;
	uint64_t starttime;
	uint64_t region;
	uint64_t pages;
	uint64_t dirty_pages;
	uint64_t seed;
};

static volatile sig_atomic_t stop_requested;

/* ---------------------------------------------------------------- pattern */

/* splitmix64 finaliser: a bijective 64-bit mixer. */
static uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/*
 * Seed of a page's splitmix64 stream.  Nesting the mixer makes every
 * (page, generation) pair start a different stream, so pages differ from
 * each other and from their own earlier generations.
 */
static uint64_t page_stream_seed(uint64_t seed, uint64_t page, uint32_t gen)
{
	return mix64(mix64(mix64(seed) ^ page) ^ gen);
}

/* Word w of the page's pattern: the w-th output of its splitmix64 stream. */
static uint64_t pattern_word(uint64_t stream_seed, uint64_t w)
{
	return mix64(stream_seed + (w + 1) * 0x9e3779b97f4a7c15ULL);
}

static void write_page(uint64_t *dst, uint64_t seed, uint64_t page, uint32_t gen)
{
	uint64_t s = page_stream_seed(seed, page, gen);

	for (uint64_t w = 0; w < PAGE_WORDS; w++)
		dst[w] = pattern_word(s, w);
}

struct page_check {
	unsigned bad_words;
	unsigned first_bad;	/* word index */
	uint64_t expected;
	uint64_t actual;
};

static void check_page(const uint64_t *src, uint64_t seed, uint64_t page,
		       uint32_t gen, struct page_check *out)
{
	uint64_t s = page_stream_seed(seed, page, gen);

	memset(out, 0, sizeof(*out));
	for (uint64_t w = 0; w < PAGE_WORDS; w++) {
		uint64_t want = pattern_word(s, w);

		if (src[w] == want)
			continue;
		if (out->bad_words++ == 0) {
			out->first_bad = (unsigned)w;
			out->expected = want;
			out->actual = src[w];
		}
	}
}

/* ---------------------------------------------------------------- /proc */

/*
 * Guest-physical address of a virtual address in process pid's pagemap, or
 * -1 with errno set.  Only root sees real PFNs (others read 0).
 */
static int64_t virt_to_phys(const char *pid, uint64_t va)
{
	char path[64];
	uint64_t entry;
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%s/pagemap", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	n = pread(fd, &entry, sizeof(entry), (off_t)(va / PAGE_SIZE * sizeof(entry)));
	close(fd);
	if (n != sizeof(entry)) {
		errno = n < 0 ? errno : EIO;
		return -1;
	}
	if (!(entry & PAGEMAP_PRESENT)) {
		errno = ENOENT;
		return -1;
	}
	return (int64_t)((entry & PAGEMAP_PFN_MASK) * PAGE_SIZE + va % PAGE_SIZE);
}

/* JSON value for a gpa: a hex string, or null when the page is not present. */
static void format_gpa(char *buf, size_t size, int64_t gpa)
{
	if (gpa < 0)
		snprintf(buf, size, "null");
	else
		snprintf(buf, size, "\"0x%" PRIx64 "\"", (uint64_t)gpa);
}

/*
 * State letter and start time (clock ticks since boot) of a process.  The
 * start time pins the identity of the daemon so a recycled pid is never
 * mistaken for it (or killed).
 */
static bool read_proc_stat(long pid, char *state, uint64_t *starttime)
{
	char path[64], buf[1024], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	/* comm may contain spaces; fields resume after the last ')'. */
	p = strrchr(buf, ')');
	if (!p)
		return false;
	/* Field 3 is the state, field 22 the start time. */
	*state = p[2];
	p += 2;
	for (int field = 3; field < 22; field++) {
		p = strchr(p, ' ');
		if (!p)
			return false;
		p++;
	}
	*starttime = strtoull(p, NULL, 10);
	return true;
}

static bool daemon_alive(const struct daemon_state *st)
{
	uint64_t starttime;
	char state;

	if (!read_proc_stat(st->pid, &state, &starttime))
		return false;
	return starttime == st->starttime && state != 'Z' && state != 'X';
}

/* ---------------------------------------------------------------- files */

static void state_path(char *buf, size_t size, const char *dir, const char *name)
{
	snprintf(buf, size, "%s/%s", dir, name);
}

/* Write a whole file atomically (temp file + rename), so readers never see half. */
static int write_file_atomic(const char *dir, const char *name, const char *text)
{
	char tmp[4096], final[4096];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
	state_path(final, sizeof(final), dir, name);
	f = fopen(tmp, "w");
	if (!f)
		return -1;
	fputs(text, f);
	if (fclose(f) != 0)
		return -1;
	return rename(tmp, final);
}

/* Read a small text file into a malloc'd string, or NULL. */
static char *read_file(const char *path)
{
	char *buf = NULL, *bigger;
	size_t len = 0, cap = 2048;
	FILE *f = fopen(path, "r");

	if (!f)
		return NULL;
	do {
		cap *= 2;
		bigger = realloc(buf, cap);
		if (!bigger) {
			free(buf);
			fclose(f);
			return NULL;
		}
		buf = bigger;
		len += fread(buf + len, 1, cap - len - 1, f);
	} while (len == cap - 1);
	fclose(f);
	buf[len] = '\0';
	return buf;
}

/* Value of "key": in our own flat JSON; quoted hex strings are accepted. */
static bool json_get_u64(const char *json, const char *key, uint64_t *out)
{
	char pattern[64];
	const char *p;
	char *end;

	snprintf(pattern, sizeof(pattern), "\"%s\":", key);
	p = strstr(json, pattern);
	if (!p)
		return false;
	p += strlen(pattern);
	if (*p == '"')
		p++;
	errno = 0;
	*out = strtoull(p, &end, 0);
	return errno == 0 && end != p;
}

static void load_state(const char *dir, struct daemon_state *st)
{
	char path[4096];
	char *json;
	uint64_t pid;
	bool ok;

	state_path(path, sizeof(path), dir, "state.json");
	json = read_file(path);
	if (!json)
		die("cannot read %s: %s (no daemon started with this --state?)",
		    path, strerror(errno));
	ok = json_get_u64(json, "pid", &pid) &&
	     json_get_u64(json, "starttime", &st->starttime) &&
	     json_get_u64(json, "region", &st->region) &&
	     json_get_u64(json, "pages", &st->pages) &&
	     json_get_u64(json, "dirty_pages", &st->dirty_pages) &&
	     json_get_u64(json, "seed", &st->seed);
	free(json);
	if (!ok)
		die("malformed state file %s", path);
	st->pid = (long)pid;
}

/* Map DIR/control; create (zeroed) when asked, else it must already exist. */
static struct control *map_control(const char *dir, bool create)
{
	char path[4096];
	struct control *ctl;
	int fd;

	state_path(path, sizeof(path), dir, "control");
	fd = open(path, create ? O_RDWR | O_CREAT | O_TRUNC : O_RDWR, 0600);
	if (fd < 0)
		die("cannot open %s: %s", path, strerror(errno));
	if (create && ftruncate(fd, sizeof(*ctl)) != 0)
		die("cannot size %s: %s", path, strerror(errno));
	ctl = mmap(NULL, sizeof(*ctl), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (ctl == MAP_FAILED)
		die("cannot map %s: %s", path, strerror(errno));
	return ctl;
}

static uint32_t load_phase(const struct control *ctl)
{
	return __atomic_load_n(&ctl->phase, __ATOMIC_ACQUIRE);
}

static const char *phase_name(uint32_t phase)
{
	return phase <= PHASE_STOPPED ? phase_names[phase] : "unknown";
}

static void make_dir(const char *dir)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s", dir);
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0755) != 0 && errno != EEXIST)
			die("cannot create %s: %s", path, strerror(errno));
		*p = '/';
	}
	if (mkdir(path, 0755) != 0 && errno != EEXIST)
		die("cannot create %s: %s", path, strerror(errno));
}

static void sleep_poll_interval(void)
{
	struct timespec ts = { 0, POLL_INTERVAL_NS };

	nanosleep(&ts, NULL);
}

static struct timespec timespec_add_ns(struct timespec t, uint64_t ns)
{
	t.tv_sec += (time_t)(ns / 1000000000ULL);
	t.tv_nsec += (long)(ns % 1000000000ULL);
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

static bool timespec_before(struct timespec a, struct timespec b)
{
	return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------- daemon */

struct region {
	uint64_t *mem;
	uint32_t *gen;		/* generation last completely written, per page */
	uint64_t pages;
	uint64_t dirty_pages;
	uint64_t seed;
	uint64_t pass_ns;	/* a pass over the dirty pages takes at least this */
};

/* Record why setup failed where "start" reads it, then exit. */
static void __attribute__((noreturn, format(printf, 2, 3)))
daemon_fail(struct control *ctl, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ctl->error, sizeof(ctl->error), fmt, ap);
	va_end(ap);
	fprintf(stderr, "qmp-mig-memcheck daemon: %s\n", ctl->error);
	__atomic_store_n(&ctl->phase, PHASE_FAILED, __ATOMIC_RELEASE);
	_exit(1);
}

static void on_stop_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

static void region_alloc(struct region *r, struct control *ctl)
{
	size_t bytes = r->pages * PAGE_SIZE;
	void *mem;

	/*
	 * No transparent huge pages: khugepaged would later collapse our 4 KiB
	 * pages into a new huge page at another physical address, making the
	 * gpa handed out by "gpa" stale.  Must precede the populating mmap.
	 */
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0)
		daemon_fail(ctl, "prctl(PR_SET_THP_DISABLE): %s", strerror(errno));
	mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (mem == MAP_FAILED)
		daemon_fail(ctl, "mmap of %zu bytes: %s", bytes, strerror(errno));
	/* Locked pages are never swapped, so every page keeps a real gpa. */
	if (mlock(mem, bytes) != 0)
		daemon_fail(ctl, "mlock of %zu bytes: %s", bytes, strerror(errno));
	r->mem = mem;
	r->gen = calloc(r->pages, sizeof(*r->gen));
	if (!r->gen)
		daemon_fail(ctl, "out of memory for %" PRIu64 " generations", r->pages);
}

static uint64_t *page_addr(const struct region *r, uint64_t page)
{
	return r->mem + page * PAGE_WORDS;
}

static void region_fill(const struct region *r)
{
	for (uint64_t p = 0; p < r->pages; p++)
		write_page(page_addr(r, p), r->seed, p, 0);
}

static void publish_state(const struct region *r, const char *dir,
			  struct control *ctl)
{
	char json[512], state;
	uint64_t starttime;

	if (!read_proc_stat(getpid(), &state, &starttime))
		daemon_fail(ctl, "cannot read /proc/self/stat");
	snprintf(json, sizeof(json),
		 "{\"pid\":%ld,\"starttime\":%" PRIu64 ",\"region\":\"0x%" PRIxPTR
		 "\",\"pages\":%" PRIu64 ",\"dirty_pages\":%" PRIu64
		 ",\"seed\":\"0x%016" PRIx64 "\"}\n",
		 (long)getpid(), starttime, (uintptr_t)r->mem, r->pages,
		 r->dirty_pages, r->seed);
	if (write_file_atomic(dir, "state.json", json) != 0)
		daemon_fail(ctl, "cannot write %s/state.json: %s", dir, strerror(errno));
}

/*
 * Rewrite the dirty pages in order until SIGUSR1.  The stop flag is only
 * checked between pages, so the page in progress is always finished and its
 * new generation recorded before verification starts.
 */
static void dirty_loop(const struct region *r, struct control *ctl)
{
	uint64_t rewrites = 0, p = 0;
	struct timespec pass_end, now;

	/* Nothing to dirty: idle, noticing the signal within one poll interval. */
	while (!stop_requested && r->dirty_pages == 0)
		sleep_poll_interval();
	clock_gettime(CLOCK_MONOTONIC, &pass_end);
	while (!stop_requested) {
		write_page(page_addr(r, p), r->seed, p, r->gen[p] + 1);
		r->gen[p]++;
		__atomic_store_n(&ctl->rewrites, ++rewrites, __ATOMIC_RELAXED);
		if (++p < r->dirty_pages)
			continue;
		p = 0;
		if (r->pass_ns == 0)
			continue;
		/* Paced: sleep out the rest of this pass's time (SIGUSR1 cuts it short). */
		pass_end = timespec_add_ns(pass_end, r->pass_ns);
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &pass_end, NULL);
		/* A pass slower than its time (a slow vCPU) does not bank credit. */
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (timespec_before(pass_end, now))
			pass_end = now;
	}
}

static int append_bad_entry(char *buf, size_t size, bool first,
			    const struct region *r, uint64_t page,
			    const struct page_check *c)
{
	uint64_t va = (uintptr_t)page_addr(r, page);
	char gpa[32];

	format_gpa(gpa, sizeof(gpa), virt_to_phys("self", va));
	return snprintf(buf, size,
			"%s{\"page\":%" PRIu64 ",\"gpa\":%s,\"offset\":%u,"
			"\"expected\":\"0x%016" PRIx64 "\",\"actual\":\"0x%016" PRIx64
			"\",\"bad_words\":%u}",
			first ? "" : ",", page, gpa,
			c->first_bad * (unsigned)sizeof(uint64_t), c->expected,
			c->actual, c->bad_words);
}

/* Check every page and write DIR/report.json: the line "verify" prints. */
static void verify_and_report(const struct region *r, const char *dir,
			      struct control *ctl)
{
	size_t size = 512 + MAX_REPORTED_PAGES * 256, len;
	char *bad = malloc(size), *report = malloc(size + 256);
	uint64_t bad_pages = 0;
	struct page_check c;

	if (!bad || !report)
		daemon_fail(ctl, "out of memory for the report");
	len = 0;
	bad[0] = '\0';
	for (uint64_t p = 0; p < r->pages; p++) {
		check_page(page_addr(r, p), r->seed, p, r->gen[p], &c);
		if (c.bad_words == 0)
			continue;
		if (bad_pages++ < MAX_REPORTED_PAGES)
			len += append_bad_entry(bad + len, size - len,
						bad_pages == 1, r, p, &c);
	}
	snprintf(report, size + 256,
		 "{\"pages\":%" PRIu64 ",\"bad_pages\":%" PRIu64
		 ",\"rewrites\":%" PRIu64 ",\"bad\":[%s]}\n",
		 r->pages, bad_pages, ctl->rewrites, bad);
	if (write_file_atomic(dir, "report.json", report) != 0)
		daemon_fail(ctl, "cannot write %s/report.json: %s", dir, strerror(errno));
}

static void redirect_stdio(const char *dir)
{
	char path[4096];
	int in = open("/dev/null", O_RDONLY), out;

	state_path(path, sizeof(path), dir, "daemon.log");
	out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOCTTY, 0644);
	if (in >= 0)
		dup2(in, STDIN_FILENO);
	if (out >= 0) {
		dup2(out, STDOUT_FILENO);
		dup2(out, STDERR_FILENO);
	}
	if (in > STDERR_FILENO)
		close(in);
	if (out > STDERR_FILENO)
		close(out);
}

static void set_policy(int policy)
{
	struct sched_param param = { .sched_priority = 0 };

	if (sched_setscheduler(0, policy, &param) != 0)
		fprintf(stderr, "memcheck: sched_setscheduler(%d): %s\n", policy, strerror(errno));
}

static void __attribute__((noreturn))
run_daemon(struct region *r, const char *dir, struct control *ctl)
{
	struct sigaction sa = { .sa_handler = on_stop_signal };

	/* Own session: the SSH session ending must not take the daemon along. */
	setsid();
	redirect_stdio(dir);
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);

	region_alloc(r, ctl);
	region_fill(r);
	publish_state(r, dir, ctl);
	__atomic_store_n(&ctl->phase, PHASE_RUNNING, __ATOMIC_RELEASE);

	/*
	 * SCHED_IDLE: whatever else the guest runs (sshd, the other agents) goes
	 * first.  Unpaced (--rate-mb 0) the loop still keeps the vCPU busy, which
	 * under nested emulation slows the whole lab; a rate lets the vCPU idle.
	 */
	set_policy(SCHED_IDLE);
	dirty_loop(r, ctl);
	set_policy(SCHED_OTHER);
	__atomic_store_n(&ctl->phase, PHASE_VERIFYING, __ATOMIC_RELEASE);
	verify_and_report(r, dir, ctl);
	__atomic_store_n(&ctl->phase, PHASE_DONE, __ATOMIC_RELEASE);
	_exit(0);
}

/* ---------------------------------------------------------------- commands */

static uint64_t fresh_seed(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return mix64((uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec) ^
	       mix64((uint64_t)getpid());
}

/* Refuse to start a second daemon over a live one: it would lose its state. */
static void refuse_if_running(const char *dir)
{
	char path[4096];
	struct daemon_state st;

	state_path(path, sizeof(path), dir, "state.json");
	if (access(path, F_OK) != 0)
		return;
	load_state(dir, &st);
	if (daemon_alive(&st))
		die("a daemon is already running (pid %ld); stop or verify it first",
		    st.pid);
}

static void remove_old_files(const char *dir)
{
	const char *names[] = { "state.json", "report.json" };
	char path[4096];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		state_path(path, sizeof(path), dir, names[i]);
		if (unlink(path) != 0 && errno != ENOENT)
			die("cannot remove %s: %s", path, strerror(errno));
	}
}

/* Wait for the freshly forked daemon to finish filling the region. */
static void wait_until_running(pid_t child, struct control *ctl, long timeout_s)
{
	double deadline = now_s() + (double)timeout_s;
	int status;

	for (;;) {
		uint32_t phase = load_phase(ctl);

		if (phase == PHASE_RUNNING)
			return;
		if (phase == PHASE_FAILED)
			die("daemon setup failed: %s", ctl->error);
		if (waitpid(child, &status, WNOHANG) == child)
			die("daemon exited during setup (wait status 0x%x)", status);
		if (now_s() > deadline) {
			kill(child, SIGKILL);
			die("daemon did not finish filling the region within %ld s",
			    timeout_s);
		}
		sleep_poll_interval();
	}
}

static void cmd_start(const struct options *o)
{
	struct region r = { 0 };
	struct control *ctl;
	pid_t child;

	if (o->size_mb <= 0)
		die("start needs --size-mb N with N > 0");
	if (o->dirty_mb < 0 || o->dirty_mb > o->size_mb)
		die("start needs --dirty-mb M with 0 <= M <= size-mb (%ld)", o->size_mb);
	if (o->rate_mb < 0)
		die("--rate-mb must be >= 0 (0: rewrite as fast as the vCPU allows)");
	make_dir(o->state_dir);
	refuse_if_running(o->state_dir);
	remove_old_files(o->state_dir);
	ctl = map_control(o->state_dir, true);

	r.pages = (uint64_t)o->size_mb * MIB / PAGE_SIZE;
	r.dirty_pages = (uint64_t)o->dirty_mb * MIB / PAGE_SIZE;
	r.seed = fresh_seed();
	if (o->rate_mb > 0)
		r.pass_ns = (uint64_t)((double)(r.dirty_pages * PAGE_SIZE) * 1e9 /
				       ((double)o->rate_mb * MIB));
	fflush(stdout);
	child = fork();
	if (child < 0)
		die("fork: %s", strerror(errno));
	if (child == 0)
		run_daemon(&r, o->state_dir, ctl);

	wait_until_running(child, ctl, o->timeout_s);
	printf("{\"pid\":%ld,\"pages\":%" PRIu64 ",\"dirty_pages\":%" PRIu64
	       ",\"size_mb\":%ld,\"rate_mb\":%ld}\n",
	       (long)child, r.pages, r.dirty_pages, o->size_mb, o->rate_mb);
}

static void cmd_status(const struct options *o)
{
	struct daemon_state st;
	struct control *ctl;

	load_state(o->state_dir, &st);
	ctl = map_control(o->state_dir, false);
	printf("{\"pid\":%ld,\"alive\":%s,\"rewrites\":%" PRIu64 ",\"phase\":\"%s\"}\n",
	       st.pid, daemon_alive(&st) ? "true" : "false",
	       __atomic_load_n(&ctl->rewrites, __ATOMIC_RELAXED),
	       phase_name(load_phase(ctl)));
}

static void load_running_daemon(const char *dir, struct daemon_state *st)
{
	load_state(dir, st);
	if (!daemon_alive(st))
		die("daemon (pid %ld) is not running", st->pid);
}

/*
 * Wait until the daemon has written its report and exited, so that a
 * "status" or "start" right after verify already sees it gone.
 */
static void wait_for_report(const struct daemon_state *st, struct control *ctl,
			    long timeout_s)
{
	double deadline = now_s() + (double)timeout_s;

	for (;;) {
		uint32_t phase = load_phase(ctl);
		bool alive = daemon_alive(st);

		if (phase == PHASE_DONE && !alive)
			return;
		if (phase == PHASE_FAILED)
			die("daemon failed during verification: %s", ctl->error);
		if (phase != PHASE_DONE && !alive)
			die("daemon (pid %ld) exited without a report", st->pid);
		if (now_s() > deadline)
			die("no verification report within %ld s (daemon phase %s)",
			    timeout_s, phase_name(phase));
		sleep_poll_interval();
	}
}

static void cmd_verify(const struct options *o)
{
	struct daemon_state st;
	struct control *ctl;
	char path[4096], *report;

	load_running_daemon(o->state_dir, &st);
	ctl = map_control(o->state_dir, false);
	if (load_phase(ctl) != PHASE_RUNNING)
		die("daemon is %s, not running", phase_name(load_phase(ctl)));
	if (kill((pid_t)st.pid, SIGUSR1) != 0)
		die("cannot signal daemon pid %ld: %s", st.pid, strerror(errno));
	wait_for_report(&st, ctl, o->timeout_s);

	state_path(path, sizeof(path), o->state_dir, "report.json");
	report = read_file(path);
	if (!report)
		die("cannot read %s: %s", path, strerror(errno));
	fputs(report, stdout);
	free(report);
}

static void cmd_gpa(const struct options *o)
{
	struct daemon_state st;
	char pid[32], gpa[32];
	uint64_t va;
	int64_t pa;

	if (o->page < 0)
		die("gpa needs --page P with P >= 0");
	load_running_daemon(o->state_dir, &st);
	if ((uint64_t)o->page >= st.pages)
		die("page %ld out of range: the region has %" PRIu64 " pages",
		    o->page, st.pages);
	va = st.region + (uint64_t)o->page * PAGE_SIZE;
	snprintf(pid, sizeof(pid), "%ld", st.pid);
	pa = virt_to_phys(pid, va);
	if (pa < 0 && errno != ENOENT)
		die("cannot read /proc/%s/pagemap: %s", pid, strerror(errno));
	format_gpa(gpa, sizeof(gpa), pa);
	/* Pages below dirty_pages are rewritten continuously, so corruption there is overwritten. */
	printf("{\"page\":%ld,\"gva\":\"0x%" PRIx64 "\",\"gpa\":%s,\"dirty\":%s}\n",
	       o->page, va, gpa, (uint64_t)o->page < st.dirty_pages ? "true" : "false");
}

static void cmd_stop(const struct options *o)
{
	struct daemon_state st;
	struct control *ctl;
	double deadline;

	load_running_daemon(o->state_dir, &st);
	ctl = map_control(o->state_dir, false);
	if (kill((pid_t)st.pid, SIGKILL) != 0)
		die("cannot kill daemon pid %ld: %s", st.pid, strerror(errno));
	deadline = now_s() + (double)o->timeout_s;
	while (daemon_alive(&st)) {
		if (now_s() > deadline)
			die("daemon pid %ld still alive %ld s after SIGKILL",
			    st.pid, o->timeout_s);
		sleep_poll_interval();
	}
	__atomic_store_n(&ctl->phase, PHASE_STOPPED, __ATOMIC_RELEASE);
	printf("{\"pid\":%ld,\"stopped\":true}\n", st.pid);
}

/* ---------------------------------------------------------------- main */

static void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "state", required_argument, NULL, 's' },
		{ "size-mb", required_argument, NULL, 'n' },
		{ "dirty-mb", required_argument, NULL, 'm' },
		{ "rate-mb", required_argument, NULL, 'r' },
		{ "page", required_argument, NULL, 'p' },
		{ "timeout", required_argument, NULL, 't' },
		{ 0 }
	};
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 's': o->state_dir = optarg; break;
		case 'n': o->size_mb = parse_long("size-mb", optarg); break;
		case 'm': o->dirty_mb = parse_long("dirty-mb", optarg); break;
		case 'r': o->rate_mb = parse_long("rate-mb", optarg); break;
		case 'p': o->page = parse_long("page", optarg); break;
		case 't': o->timeout_s = parse_long("timeout", optarg); break;
		default: die("unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc)
		die("unexpected argument '%s'", argv[optind]);
	if (o->timeout_s <= 0)
		die("--timeout must be > 0");
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(const struct options *);
	} commands[] = {
		{ "start", cmd_start }, { "status", cmd_status },
		{ "verify", cmd_verify }, { "gpa", cmd_gpa }, { "stop", cmd_stop },
	};
	struct options o = {
		.state_dir = DEFAULT_STATE_DIR, .size_mb = -1, .dirty_mb = -1,
		.page = -1, .timeout_s = 60,
	};

	if (argc < 2)
		die("usage: qmp-mig-memcheck start|status|verify|gpa|stop [options]");
	parse_options(argc - 1, argv + 1, &o);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[1], commands[i].name) == 0) {
			commands[i].run(&o);
			return 0;
		}
	}
	die("unknown command '%s' (start|status|verify|gpa|stop)", argv[1]);
}
