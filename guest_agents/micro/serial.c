// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * COM1, polled: the harness's only line to the guest.  QEMU serves it as a TCP
 * socket (-chardev socket,server=on) and drops what is sent while nobody is
 * connected, which the harness's ping handshake allows for.
 */
#include "micro.h"

#define COM1 0x3F8
#define UART_LSR 5
#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20
#define MAX_LINE 2048

static char line[MAX_LINE];
static size_t line_len;
static bool overlong;	/* the current line did not fit: it is dropped whole */

void serial_init(void)
{
	outb(COM1 + 1, 0x00);	/* no interrupts */
	outb(COM1 + 3, 0x80);	/* DLAB: divisor follows */
	outb(COM1 + 0, 0x01);	/* 115200 baud (QEMU does not care) */
	outb(COM1 + 1, 0x00);
	outb(COM1 + 3, 0x03);	/* 8N1 */
	/* FIFOs on and cleared, receive trigger at 14 bytes: QEMU hands over as many
	 * bytes at a time as the trigger level allows, one at a time at level 1. */
	outb(COM1 + 2, 0xC7);
	outb(COM1 + 4, 0x03);	/* DTR, RTS */
}

void serial_write(const char *s, size_t n)
{
	for (; n; n--, s++) {
		while (!(inb(COM1 + UART_LSR) & LSR_THR_EMPTY))
			;
		outb(COM1, (uint8_t)*s);
	}
}

const char *serial_poll_line(void)
{
	while (inb(COM1 + UART_LSR) & LSR_DATA_READY) {
		char c = (char)inb(COM1);

		if (c == '\r')
			continue;
		if (c == '\n') {
			bool dropped = overlong;

			line[line_len] = '\0';
			line_len = 0;
			overlong = false;
			if (dropped)
				return "";	/* answered as an unknown command */
			return line;
		}
		if (line_len + 1 < MAX_LINE)
			line[line_len++] = c;
		else
			overlong = true;
	}
	return NULL;
}
