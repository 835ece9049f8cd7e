// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * mttyio on the micro guest: guest_agents/mttyio.c's commands and answers, with
 * the UART registers reached by IN/OUT directly.  The mtty facts it relies on
 * are listed in mttyio.c.
 *
 *   list
 *   write --bdf BDF --port I [--hex HEXBYTES] [--scratch HEXBYTE] [--clear]
 *   read  --bdf BDF --port I [--max N]
 */
#include "micro.h"

#include "../mtty.h"

#define MAX_DEVICES 16

/* Base of each BAR that is an assigned I/O BAR of at least 8 ports, else 0. */
static void io_bars(const struct pci_function *f, uint16_t base[MAX_BARS])
{
	for (int bar = 0; bar < MAX_BARS; bar++) {
		uint64_t size, b;
		bool io;

		b = pci_bar(f, bar, &io, &size);
		base[bar] = io && b && size >= UART_REGS ? (uint16_t)b : 0;
	}
}

static uint16_t port_base(const struct args *a, struct reply *r)
{
	struct pci_function f;
	uint16_t base[MAX_BARS];
	int64_t port = -1;

	if (!pci_lookup(arg_value(a, "bdf"), MTTY_VENDOR, MTTY_DEVICE, &f, r) ||
	    !arg_number(a, r, "port", &port))
		return 0;
	if (port < 0 || port >= MAX_BARS) {
		reply_error(r, "missing or invalid --port (0..%d)", MAX_BARS - 1);
		return 0;
	}
	io_bars(&f, base);
	if (!base[port])
		reply_error(r, "%s has no I/O BAR for port %ld", arg_value(a, "bdf"), (long)port);
	else
		pci_enable(&f);
	return base[port];
}

/* Offset 0 must be the data register: with DLAB set it is the divisor. */
static void uart_open(uint16_t base)
{
	uint8_t lcr = inb(base + UART_LCR);

	if (lcr & UART_LCR_DLAB)
		outb(base + UART_LCR, lcr & ~UART_LCR_DLAB);
}

static void uart_enable_fifo(uint16_t base, bool clear)
{
	outb(base + UART_FCR, UART_FCR_ENABLE_FIFO |
			      (clear ? UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT : 0));
}

static bool hex_byte(const char *name, const char *arg, int64_t *out, struct reply *r)
{
	const char *p = arg;
	int hi, lo;

	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
		p += 2;
	hi = hex_digit(p[0]);
	lo = p[0] ? hex_digit(p[1]) : -1;
	if (strlen(p) != 2 || hi < 0 || lo < 0) {
		reply_error(r, "invalid value for --%s: '%s' (one hex byte)", name, arg);
		return false;
	}
	*out = hi << 4 | lo;
	return true;
}

static void cmd_write(const struct args *a, struct reply *r)
{
	const char *hex = arg_value(a, "hex"), *scratch_arg = arg_value(a, "scratch");
	bool clear = arg_flag(a, "clear");
	uint8_t bytes[MTTY_FIFO_USABLE], lsr;
	int64_t scratch = -1;
	size_t n = 0;
	uint16_t base;

	if (scratch_arg && !hex_byte("scratch", scratch_arg, &scratch, r))
		return;
	if (!hex && scratch < 0 && !clear)
		return reply_error(r, "write needs --hex HEXBYTES, --scratch HEXBYTE and/or --clear");
	if (hex) {
		size_t len = strlen(hex);

		if (len % 2)
			return reply_error(r, "--hex needs an even number of hex digits, got %zu", len);
		n = len / 2;
		if (n > MTTY_FIFO_USABLE)
			return reply_error(r, "%zu bytes do not fit: the mtty FIFO keeps at most %d "
					   "(16 slots, a 16th byte makes it read as empty)", n,
					   MTTY_FIFO_USABLE);
		for (size_t i = 0; i < n; i++) {
			int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);

			if (hi < 0 || lo < 0)
				return reply_error(r, "invalid hex digit in --hex '%s'", hex);
			bytes[i] = (uint8_t)(hi << 4 | lo);
		}
	}
	if (!(base = port_base(a, r)))
		return;
	uart_open(base);
	if (n > 0) {
		uart_enable_fifo(base, clear);
		if (inb(base + UART_LSR) & UART_LSR_DR)
			return reply_error(r, "the FIFO already holds data: read it first or pass --clear");
		for (size_t i = 0; i < n; i++)
			outb(base + UART_RX, bytes[i]);
		lsr = inb(base + UART_LSR);
		if (lsr & UART_LSR_OE)
			return reply_error(r, "FIFO overrun after writing %zu bytes (LSR 0x%02x)", n, lsr);
		if (!(lsr & UART_LSR_DR))
			return reply_error(r, "wrote %zu bytes but LSR 0x%02x shows no data ready", n, lsr);
	} else if (clear) {
		uart_enable_fifo(base, true);
	}
	if (scratch >= 0)
		outb(base + UART_SCR, (uint8_t)scratch);
	reply_printf(r, "{\"written\":%zu}", n);
}

static void cmd_read(const struct args *a, struct reply *r)
{
	int64_t max = 64, count = 0;
	char hex[2 * 256 + 1] = "";
	uint16_t base;

	if (!arg_number(a, r, "max", &max))
		return;
	if (max < 0 || max > 256)
		return reply_error(r, "--max must be 0..256");
	if (!(base = port_base(a, r)))
		return;
	uart_open(base);
	/* Each RBR read pops one byte; only read while LSR says one is there. */
	while (count < max && (inb(base + UART_LSR) & UART_LSR_DR)) {
		snprintf(hex + 2 * count, 3, "%02x", inb(base + UART_RX));
		count++;
	}
	reply_printf(r, "{\"hex\":\"%s\",\"count\":%ld,\"scratch\":\"0x%02x\"}", hex, (long)count,
		     inb(base + UART_SCR));
}

static void cmd_list(const struct args *a, struct reply *r)
{
	struct pci_function found[MAX_DEVICES];
	int n = pci_find(MTTY_VENDOR, MTTY_DEVICE, found, MAX_DEVICES);

	(void)a;
	reply_printf(r, "{\"devices\":[");
	for (int i = 0; i < n; i++) {
		uint16_t base[MAX_BARS];
		bool first_port = true;
		char bdf[16];

		pci_bdf(&found[i], bdf, sizeof(bdf));
		io_bars(&found[i], base);
		reply_printf(r, "%s{\"bdf\":\"%s\",\"ports\":[", i ? "," : "", bdf);
		for (int bar = 0; bar < MAX_BARS; bar++) {
			if (!base[bar])
				continue;
			reply_printf(r, "%s{\"index\":%d,\"base\":\"0x%x\"}", first_port ? "" : ",", bar,
				     base[bar]);
			first_port = false;
		}
		reply_printf(r, "]}");
	}
	reply_printf(r, "]}");
}

static void command(const struct args *a, struct reply *r)
{
	static const char *const known[] = { "bdf", "port", "hex", "scratch", "clear", "max", NULL };
	const char *bad = arg_unknown(a, known);

	if (bad)
		reply_error(r, "unknown or incomplete option '%s'", bad);
	else if (!strcmp(a->argv[1], "list"))
		cmd_list(a, r);
	else if (!strcmp(a->argv[1], "write"))
		cmd_write(a, r);
	else if (!strcmp(a->argv[1], "read"))
		cmd_read(a, r);
	else
		reply_error(r, "unknown command '%s' (list|write|read)", a->argv[1]);
}

const struct agent mttyio_agent = { "mttyio", command, NULL };
