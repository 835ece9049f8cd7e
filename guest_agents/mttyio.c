// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * qmp-mig-mttyio: pokes the UARTs of the kernel's mtty sample device
 * (samples/vfio-mdev/mtty.c, PCI 4348:3253) with raw port I/O through
 * /dev/port, below the tty
 * layer, so bytes put in a port's loop-back FIFO stay there across a live
 * migration and can be read back on the destination.  One line of JSON out.
 *
 *   list
 *   write --bdf BDF --port I [--hex HEXBYTES] [--scratch HEXBYTE] [--clear]
 *   read  --bdf BDF --port I [--max N]
 *
 * mtty facts this relies on (checked against Linux 6.12 mtty.c):
 *  - Port I is BAR I, an 8-byte I/O BAR with 16550 registers.  Bytes written
 *    to THR go straight into a loop-back FIFO that RBR reads back.
 *  - The FIFO is a 16-slot ring whose "empty" test is head == tail, so a
 *    16th byte wraps head onto tail: the FIFO then looks empty (LSR.DR clear)
 *    and its bytes cannot be read.  Only 15 bytes are usable.
 *  - FCR bit 0 (FIFO enable) sets the capacity: 16 when set, 1 when clear.
 *    The 8250 driver leaves FCR = 0 after probing, so we must enable it.
 *    FCR bits 1/2 (clear RX/TX) empty the FIFO; so does the 8250 driver
 *    whenever something opens or closes the ttyS port, which is why nothing
 *    may open it during a test.
 *  - With LCR.DLAB set, offsets 0/1 access the divisor instead of THR/RBR.
 *  - Reading RBR with the FIFO empty returns an uninitialised byte, so RBR
 *    is only read while LSR.DR is set.
 *  - A write to a full FIFO drops the byte and sets LSR.OE; the next write
 *    that fits clears OE again.
 *  - SCR (offset 7) is plain storage, migrated with the rest of the port.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "agent.h"
#include "mtty.h"

#define PCI_DEVICES "/sys/bus/pci/devices"
#define IORESOURCE_IO 0x100
#define DEFAULT_READ_MAX 64

struct options {
	const char *bdf;
	long port;
	const char *hex;
	long scratch;
	long max;
	bool clear;
};


/* ---------------------------------------------------------------- sysfs */

static bool read_sysfs_hex(const char *bdf, const char *attr, unsigned long *out)
{
	char path[512];
	FILE *f;
	int n;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/%s", bdf, attr);
	f = fopen(path, "r");
	if (!f)
		return false;
	n = fscanf(f, "%lx", out);
	fclose(f);
	return n == 1;
}

static bool is_mtty(const char *bdf)
{
	unsigned long vendor, device;

	return read_sysfs_hex(bdf, "vendor", &vendor) &&
	       read_sysfs_hex(bdf, "device", &device) &&
	       vendor == MTTY_VENDOR && device == MTTY_DEVICE;
}

/*
 * Base port of every BAR that is an assigned I/O BAR of at least 8 ports,
 * 0 for the others.  The resource file has one "start end flags" line per
 * resource, BARs first.
 */
static void read_io_bars(const char *bdf, unsigned long base[MAX_BARS])
{
	char path[512];
	unsigned long long start, end, flags;
	FILE *f;

	snprintf(path, sizeof(path), PCI_DEVICES "/%s/resource", bdf);
	f = fopen(path, "r");
	if (!f)
		die("cannot read %s: %s", path, strerror(errno));
	for (int bar = 0; bar < MAX_BARS; bar++) {
		base[bar] = 0;
		if (fscanf(f, "%llx %llx %llx", &start, &end, &flags) != 3)
			continue;
		if ((flags & IORESOURCE_IO) && start && end >= start + UART_REGS - 1)
			base[bar] = (unsigned long)start;
	}
	fclose(f);
}

/* I/O base of port I of the mtty device at bdf; refuses anything else. */
static unsigned short port_base(const char *bdf, long port)
{
	unsigned long base[MAX_BARS];

	if (!bdf)
		die("missing --bdf (see 'list')");
	if (strchr(bdf, '/'))
		die("invalid --bdf '%s'", bdf);
	if (!is_mtty(bdf))
		die("%s is not an mtty device (%04x:%04x)", bdf, MTTY_VENDOR,
		    MTTY_DEVICE);
	if (port < 0 || port >= MAX_BARS)
		die("missing or invalid --port (0..%d)", MAX_BARS - 1);
	read_io_bars(bdf, base);
	if (!base[port])
		die("%s has no I/O BAR for port %ld", bdf, port);
	return (unsigned short)base[port];
}

/* ---------------------------------------------------------------- UART */

/*
 * Gain access to the port's registers and make offset 0 the data register:
 * with DLAB set it would be the divisor latch instead.
 */
/*
 * Port I/O goes through /dev/port, done by the kernel, rather than ioperm()
 * and user-mode in/out: under nested SVM emulated by TCG the TSS I/O bitmap
 * is not honoured and user-mode in/out faults.
 */
static int devport = -1;

static unsigned char inb(unsigned short port)
{
	unsigned char value;

	if (pread(devport, &value, 1, port) != 1)
		die("read of port 0x%x: %s", port, strerror(errno));
	return value;
}

static void outb(unsigned char value, unsigned short port)
{
	if (pwrite(devport, &value, 1, port) != 1)
		die("write of port 0x%x: %s", port, strerror(errno));
}

static void uart_open(unsigned short base)
{
	unsigned char lcr;

	devport = open("/dev/port", O_RDWR | O_CLOEXEC);
	if (devport < 0)
		die("/dev/port: %s (needs root / CAP_SYS_RAWIO)", strerror(errno));
	lcr = inb(base + UART_LCR);
	if (lcr & UART_LCR_DLAB)
		outb(lcr & ~UART_LCR_DLAB, base + UART_LCR);
}

static bool uart_data_ready(unsigned short base)
{
	return inb(base + UART_LSR) & UART_LSR_DR;
}

/*
 * Give the FIFO its full 16 slots.  Without the clear bits this keeps what
 * the FIFO already holds; with them it empties it.
 */
static void uart_enable_fifo(unsigned short base, bool clear)
{
	unsigned char fcr = UART_FCR_ENABLE_FIFO;

	if (clear)
		fcr |= UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT;
	outb(fcr, base + UART_FCR);
}

/* ---------------------------------------------------------------- commands */

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decode --hex into bytes; returns the byte count. */
static size_t parse_hex_bytes(const char *hex, unsigned char *out, size_t max)
{
	size_t len = strlen(hex), n = len / 2;

	if (len % 2)
		die("--hex needs an even number of hex digits, got %zu", len);
	if (n > max)
		die("%zu bytes do not fit: the mtty FIFO keeps at most %zu "
		    "(16 slots, a 16th byte makes it read as empty)", n, max);
	for (size_t i = 0; i < n; i++) {
		int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			die("invalid hex digit in --hex '%s'", hex);
		out[i] = (unsigned char)(hi << 4 | lo);
	}
	return n;
}

static void write_fifo(unsigned short base, const unsigned char *bytes,
		       size_t n, bool clear)
{
	unsigned char lsr;

	uart_enable_fifo(base, clear);
	/* Appending could silently wrap the ring (see top); insist on empty. */
	if (uart_data_ready(base))
		die("the FIFO already holds data: read it first or pass --clear");
	for (size_t i = 0; i < n; i++)
		outb(bytes[i], base + UART_RX);
	lsr = inb(base + UART_LSR);
	if (lsr & UART_LSR_OE)
		die("FIFO overrun after writing %zu bytes (LSR 0x%02x)", n, lsr);
	if (!(lsr & UART_LSR_DR))
		die("wrote %zu bytes but LSR 0x%02x shows no data ready", n, lsr);
}

static void cmd_write(const struct options *o)
{
	unsigned char bytes[MTTY_FIFO_USABLE];
	unsigned short base;
	size_t n = 0;

	if (!o->hex && o->scratch < 0 && !o->clear)
		die("write needs --hex HEXBYTES, --scratch HEXBYTE and/or --clear");
	if (o->hex)
		n = parse_hex_bytes(o->hex, bytes, sizeof(bytes));
	base = port_base(o->bdf, o->port);
	uart_open(base);
	if (n > 0)
		write_fifo(base, bytes, n, o->clear);
	else if (o->clear)
		uart_enable_fifo(base, true);
	if (o->scratch >= 0)
		outb((unsigned char)o->scratch, base + UART_SCR);
	printf("{\"written\":%zu}\n", n);
}

static void cmd_read(const struct options *o)
{
	char hex[2 * 256 + 1] = "";
	unsigned short base;
	long count = 0;

	if (o->max < 0 || o->max > 256)
		die("--max must be 0..256");
	base = port_base(o->bdf, o->port);
	uart_open(base);
	/* Each RBR read pops one byte; only read while LSR says one is there. */
	while (count < o->max && uart_data_ready(base)) {
		snprintf(hex + 2 * count, 3, "%02x", inb(base + UART_RX));
		count++;
	}
	printf("{\"hex\":\"%s\",\"count\":%ld,\"scratch\":\"0x%02x\"}\n", hex,
	       count, inb(base + UART_SCR));
}

static void print_device(FILE *out, const char *bdf, bool first)
{
	unsigned long base[MAX_BARS];
	bool first_port = true;

	read_io_bars(bdf, base);
	fprintf(out, "%s{\"bdf\":\"%s\",\"ports\":[", first ? "" : ",", bdf);
	for (int bar = 0; bar < MAX_BARS; bar++) {
		if (!base[bar])
			continue;
		fprintf(out, "%s{\"index\":%d,\"base\":\"0x%lx\"}",
			first_port ? "" : ",", bar, base[bar]);
		first_port = false;
	}
	fputs("]}", out);
}

static int not_dot(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

/*
 * The list is built in memory and printed at the end, so an error on the
 * way still yields a single JSON line.
 */
static void cmd_list(const struct options *o)
{
	struct dirent **entries;
	bool first = true;
	char *json;
	size_t json_len;
	FILE *out;
	int n;

	(void)o;
	n = scandir(PCI_DEVICES, &entries, not_dot, alphasort);
	if (n < 0)
		die("cannot list " PCI_DEVICES ": %s", strerror(errno));
	out = open_memstream(&json, &json_len);
	if (!out)
		die("open_memstream: %s", strerror(errno));
	for (int i = 0; i < n; i++) {
		if (is_mtty(entries[i]->d_name)) {
			print_device(out, entries[i]->d_name, first);
			first = false;
		}
		free(entries[i]);
	}
	free(entries);
	fclose(out);
	printf("{\"devices\":[%s]}\n", json);
	free(json);
}

/* ---------------------------------------------------------------- main */


/* One byte in hex, "5a" or "0x5a", as for --hex. */
static long parse_hex_byte(const char *name, const char *arg)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(arg, &end, 16);
	if (errno || end == arg || *end || v < 0 || v > 0xff)
		die("invalid value for --%s: '%s' (one hex byte)", name, arg);
	return v;
}

static void parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "bdf", required_argument, NULL, 'b' },
		{ "port", required_argument, NULL, 'p' },
		{ "hex", required_argument, NULL, 'x' },
		{ "scratch", required_argument, NULL, 's' },
		{ "max", required_argument, NULL, 'm' },
		{ "clear", no_argument, NULL, 'c' },
		{ 0 }
	};
	int c;

	opterr = 0;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'b': o->bdf = optarg; break;
		case 'p': o->port = parse_long("port", optarg); break;
		case 'x': o->hex = optarg; break;
		case 's': o->scratch = parse_hex_byte("scratch", optarg); break;
		case 'm': o->max = parse_long("max", optarg); break;
		case 'c': o->clear = true; break;
		default: die("unknown or incomplete option '%s'", argv[optind - 1]);
		}
	}
	if (optind != argc)
		die("unexpected argument '%s'", argv[optind]);
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*run)(const struct options *);
	} commands[] = {
		{ "list", cmd_list }, { "write", cmd_write }, { "read", cmd_read },
	};
	struct options o = { .port = -1, .scratch = -1, .max = DEFAULT_READ_MAX };

	if (argc < 2)
		die("usage: qmp-mig-mttyio list|write|read [options]");
	parse_options(argc - 1, argv + 1, &o);
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[1], commands[i].name) == 0) {
			commands[i].run(&o);
			return 0;
		}
	}
	die("unknown command '%s' (list|write|read)", argv[1]);
}
