// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * What every qmp-mig guest agent shares: one line of JSON out, and a failure is
 * {"error": "..."} with exit status 1.  Header-only (static functions), so each
 * agent stays one static binary built from one .c file.
 */
#ifndef QMP_MIG_AGENT_H
#define QMP_MIG_AGENT_H

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Print {"error": ...} and exit non-zero: the only way a command fails. */
static void __attribute__((noreturn, format(printf, 1, 2)))
die(const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	printf("{\"error\":\"");
	for (const char *p = msg; *p; p++) {
		if (*p == '"' || *p == '\\')
			putchar('\\');
		putchar((unsigned char)*p < 0x20 ? ' ' : *p);
	}
	printf("\"}\n");
	exit(1);
}

/* The number in option --name's argument (decimal, 0x hex or 0 octal), or die. */
static long parse_long(const char *name, const char *arg)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(arg, &end, 0);
	if (errno || end == arg || *end)
		die("invalid value for --%s: '%s'", name, arg);
	return v;
}

#endif
