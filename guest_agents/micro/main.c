// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The micro guest's main loop: read a command line from COM1 and answer it, or
 * else give each agent's workload one small step.  A command runs to its end
 * before the next line is read; the harness sends one at a time.
 *
 *   ping [TOKEN]   -> {"pong":true,"token":"TOKEN","agents":[...],"memory_mb":N}
 *   AGENT COMMAND [--option value | --flag] ...
 *                  -> the line the Linux agent qmp-mig-AGENT prints
 *
 * AGENT may be given as a path (/usr/local/bin/qmp-mig-memcheck), as the
 * harness names the Linux agents.
 */
#include "micro.h"

struct multiboot_info {
	uint32_t flags;
	uint32_t mem_lower;	/* KiB below 1 MiB */
	uint32_t mem_upper;	/* KiB above 1 MiB, up to the first hole */
};
#define MULTIBOOT_MEMORY 0x1

/* Device rings and buffers come from the 8 MiB after the program, the memory
 * agent's region from there to the end of RAM. */
#define DEVICE_ARENA (8 * MIB)

extern char __image_end[];
uint64_t ram_top, region_base;
static uint64_t arena_next, arena_end;

static const struct agent *const agents[] = { &memcheck_agent, &mttyio_agent, &qmigdev_agent, &edu_agent };
#define AGENTS (sizeof(agents) / sizeof(agents[0]))

void *page_alloc(size_t pages)
{
	uint64_t p = arena_next;

	if (p + pages * PAGE_SIZE > arena_end)
		return NULL;
	arena_next += pages * PAGE_SIZE;
	memset((void *)p, 0, pages * PAGE_SIZE);
	return (void *)p;
}

/* ---- replies */

void reply_printf(struct reply *r, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (r->failed)
		return;
	va_start(ap, fmt);
	n = vsnprintf(r->buf + r->len, r->size - r->len, fmt, ap);
	va_end(ap);
	r->len += (size_t)n;
	if (r->len >= r->size) {
		r->len = 0;
		reply_error(r, "answer longer than %zu bytes", r->size);
	}
}

void reply_error(struct reply *r, const char *fmt, ...)
{
	char msg[512];
	size_t len = 0;
	va_list ap;

	if (r->failed)
		return;	/* the first error is the one that counts */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	r->failed = true;
	len = (size_t)snprintf(r->buf, r->size, "{\"error\":\"");
	for (const char *p = msg; *p && len + 4 < r->size; p++) {
		if (*p == '"' || *p == '\\')
			r->buf[len++] = '\\';
		r->buf[len++] = (unsigned char)*p < 0x20 ? ' ' : *p;
	}
	r->len = len + (size_t)snprintf(r->buf + len, r->size - len, "\"}");
}

/* ---- arguments */

const char *arg_value(const struct args *a, const char *name)
{
	for (int i = 2; i + 1 < a->argc; i++)
		if (a->argv[i][0] == '-' && a->argv[i][1] == '-' && !strcmp(a->argv[i] + 2, name))
			return a->argv[i + 1];
	return NULL;
}

bool arg_flag(const struct args *a, const char *name)
{
	for (int i = 2; i < a->argc; i++)
		if (a->argv[i][0] == '-' && a->argv[i][1] == '-' && !strcmp(a->argv[i] + 2, name))
			return true;
	return false;
}

bool arg_number(const struct args *a, struct reply *r, const char *name, int64_t *out)
{
	const char *v = arg_value(a, name);

	if (!v) {
		if (arg_flag(a, name)) {
			reply_error(r, "unknown or incomplete option '--%s'", name);
			return false;
		}
		return true;
	}
	if (!parse_number(v, out)) {
		reply_error(r, "invalid value for --%s: '%s'", name, v);
		return false;
	}
	return true;
}

bool arg_unsigned(const struct args *a, struct reply *r, const char *name, uint64_t *out, bool *given)
{
	const char *v = arg_value(a, name);
	int64_t n;

	*given = false;
	if (!v)
		return arg_number(a, r, name, &n);	/* refuses --name without its value */
	if (v[0] == '-' || !parse_number(v, &n)) {
		reply_error(r, "invalid value for --%s: '%s'", name, v);
		return false;
	}
	*out = (uint64_t)n;
	*given = true;
	return true;
}

const char *arg_unknown(const struct args *a, const char *const *known)
{
	for (int i = 2; i < a->argc; i++) {
		const char *arg = a->argv[i];
		bool ok = false;

		if (arg[0] != '-' || arg[1] != '-')
			continue;	/* an option's value */
		for (const char *const *k = known; *k; k++)
			ok |= !strcmp(arg + 2, *k);
		if (!ok)
			return arg;
	}
	return NULL;
}

static int split(char *line, struct args *a)
{
	a->argc = 0;
	for (char *p = line; *p;) {
		while (*p == ' ' || *p == '\t')
			*p++ = '\0';
		if (!*p)
			break;
		if (a->argc == MAX_ARGS)
			return -1;
		a->argv[a->argc++] = p;
		while (*p && *p != ' ' && *p != '\t')
			p++;
	}
	return a->argc;
}

/* "/usr/local/bin/qmp-mig-memcheck" -> "memcheck" */
static const char *agent_name(const char *arg)
{
	const char *slash;

	while ((slash = strchr(arg, '/')))
		arg = slash + 1;
	return strncmp(arg, "qmp-mig-", 8) ? arg : arg + 8;
}

static void ping(const struct args *a, struct reply *r)
{
	const char *token = a->argc > 1 ? a->argv[1] : "";

	reply_printf(r, "{\"pong\":true,\"token\":\"");
	for (const char *p = token; *p; p++)	/* tokens are the harness's: keep JSON valid anyway */
		reply_printf(r, "%c", *p == '"' || *p == '\\' ? '_' : *p);
	reply_printf(r, "\",\"agents\":[");
	for (size_t i = 0; i < AGENTS; i++)
		reply_printf(r, "%s\"%s\"", i ? "," : "", agents[i]->name);
	reply_printf(r, "],\"memory_mb\":%lu}", (unsigned long)(ram_top / MIB));
}

static void run(char *line)
{
	static char buf[16384];
	struct reply r = { buf, sizeof(buf), 0, false };
	struct args a;
	const char *name;
	size_t i;

	if (split(line, &a) < 0)
		reply_error(&r, "more than %d words in a command", MAX_ARGS);
	else if (a.argc == 0)
		reply_error(&r, "empty or overlong command line");
	else if (!strcmp(a.argv[0], "ping"))
		ping(&a, &r);
	else {
		name = agent_name(a.argv[0]);
		for (i = 0; i < AGENTS && strcmp(name, agents[i]->name); i++)
			;
		if (i == AGENTS)
			reply_error(&r, "the micro guest has no agent '%s'", name);
		else if (a.argc < 2)
			reply_error(&r, "usage: %s COMMAND [options]", a.argv[0]);
		else
			agents[i]->command(&a, &r);
	}
	buf[r.len++] = '\n';
	serial_write(buf, r.len);
	r.len--;
}

static void find_memory(uint32_t info_address)
{
	const struct multiboot_info *info = (const void *)(uint64_t)info_address;
	uint64_t image_end = ((uint64_t)__image_end + MIB - 1) & ~(MIB - 1);

	ram_top = 64 * MIB;	/* without the loader's word: what any useful VM has */
	if (info && (info->flags & MULTIBOOT_MEMORY))
		ram_top = MIB + (uint64_t)info->mem_upper * 1024;
	if (ram_top > 3 * 1024 * MIB)	/* the PCI hole starts below 4 GiB */
		ram_top = 3 * 1024 * MIB;
	arena_next = image_end;
	arena_end = image_end + DEVICE_ARENA;
	region_base = arena_end;
}

void micro_main(uint32_t info_address)
{
	static const char banner[] = "qmp-mig-micro: ready\n";

	serial_init();
	time_init();
	interrupts_init();
	find_memory(info_address);
	serial_write(banner, sizeof(banner) - 1);
	for (;;) {
		const char *line = serial_poll_line();

		if (line) {
			run((char *)line);
			continue;
		}
		uint64_t now = now_ns();
		bool busy = false;

		for (size_t i = 0; i < AGENTS; i++)
			if (agents[i]->tick)
				busy |= agents[i]->tick(now);
		if (!busy)
			idle();
	}
}
