// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * The mtty sample device's facts, shared by the Linux agent (mttyio.c) and the
 * micro guest's (micro/agent_mttyio.c).  Defines only: both build it, hosted and
 * freestanding.
 */
#ifndef QMP_MIG_MTTY_H
#define QMP_MIG_MTTY_H

#define MTTY_VENDOR 0x4348
#define MTTY_DEVICE 0x3253
#define MAX_BARS 6
#define UART_REGS 8

/* 16550 register offsets and bits (as in uapi/linux/serial_reg.h). */
#define UART_RX 0	/* RBR on read, THR on write */
#define UART_FCR 2
#define UART_LCR 3
#define UART_LSR 5
#define UART_SCR 7
#define UART_FCR_ENABLE_FIFO 0x01
#define UART_FCR_CLEAR_RCVR 0x02
#define UART_FCR_CLEAR_XMIT 0x04
#define UART_LCR_DLAB 0x80
#define UART_LSR_DR 0x01
#define UART_LSR_OE 0x02

/* 16 FIFO slots, but the 16th byte makes the FIFO look empty (see mttyio.c). */
#define MTTY_FIFO_USABLE 15

#endif
