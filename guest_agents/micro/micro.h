/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The micro guest: qmp-mig's guest agents without an operating system.
 *
 * One program, booted by QEMU's -kernel (multiboot), that answers on COM1 with
 * the same commands and the same one-line JSON answers as the Linux guest's
 * agents (guest_agents/NAME.c): a line in is "AGENT COMMAND --option value ...",
 * a line out is one JSON object.  Between commands it keeps its workloads going
 * (a memory region being rewritten, device DMA being fed), one small step at a
 * time, so that a command is answered within milliseconds.
 *
 * Memory is identity-mapped: a pointer is its guest-physical address, which is
 * what a device's DMA and the memory agent's "gpa" need.
 */
#ifndef QMP_MIG_MICRO_H
#define QMP_MIG_MICRO_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAGE_SIZE 4096UL
#define MIB (1024UL * 1024UL)

/* ---- lib.c: the few libc pieces we need */
void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The number in s (decimal, 0x hex or 0 octal, optional '-'); false if s is not one. */
bool parse_number(const char *s, int64_t *out);
int hex_digit(char c);
uint64_t mix64(uint64_t z);

/* ---- io.h-style port and MMIO access */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port) { uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port) { uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t mmio_read32(uint64_t a) { return *(volatile uint32_t *)a; }
static inline uint64_t mmio_read64(uint64_t a) { return *(volatile uint64_t *)a; }
static inline void mmio_write32(uint64_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline void mmio_write64(uint64_t a, uint64_t v) { *(volatile uint64_t *)a = v; }
static inline void barrier(void) { __asm__ volatile("mfence" : : : "memory"); }
/* Keeps the compiler from moving DMA-buffer accesses across an uncached register access. */
static inline void compiler_barrier(void) { __asm__ volatile("" : : : "memory"); }

/* ---- serial.c: COM1, polled */
void serial_init(void);
void serial_write(const char *s, size_t n);
/* A complete line received (without its end), or NULL; never blocks. */
const char *serial_poll_line(void);

/* ---- reply.c: the one JSON line a command prints */
struct reply {
	char *buf;
	size_t size, len;
	bool failed;
};
void reply_printf(struct reply *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Replace whatever the command printed by {"error": "..."}: the only way a command fails. */
void reply_error(struct reply *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- command line of one request */
#define MAX_ARGS 32
struct args {
	int argc;
	char *argv[MAX_ARGS];
};
/* The value of --name, or NULL; *error set when the option is there without a value. */
const char *arg_value(const struct args *a, const char *name);
bool arg_flag(const struct args *a, const char *name);
/* --name as a number: false (with the reply's error set) when present but not a number. */
bool arg_number(const struct args *a, struct reply *r, const char *name, int64_t *out);
/* --name as a number of 0 or more (a seed): *given says whether it was there. */
bool arg_unsigned(const struct args *a, struct reply *r, const char *name, uint64_t *out, bool *given);
/* The first option not in `known` (NULL-terminated), or NULL: an unknown option is refused. */
const char *arg_unknown(const struct args *a, const char *const *known);

/* ---- interrupts.c: a timer that wakes HLT */
void interrupts_init(void);	/* after time_init() */
/* Sleep until the next timer tick (at most 1 ms). */
void idle(void);
void micro_fault(const uint64_t *frame);

/* ---- time.c: the HPET */
void time_init(void);
uint64_t now_ns(void);
void delay_us(uint64_t us);

/* ---- pci.c: configuration space through 0xCF8/0xCFC, BARs as the firmware assigned them */
struct pci_function {
	uint8_t bus, dev, fn;
	uint16_t vendor, device;
};
uint32_t pci_read32(const struct pci_function *f, uint8_t off);
uint16_t pci_read16(const struct pci_function *f, uint8_t off);
void pci_write32(const struct pci_function *f, uint8_t off, uint32_t v);
void pci_write16(const struct pci_function *f, uint8_t off, uint16_t v);
/* Every function with this vendor:device, in bus order; returns how many (at most max). */
int pci_find(uint16_t vendor, uint16_t device, struct pci_function *out, int max);
/* "0000:00:03.0" */
void pci_bdf(const struct pci_function *f, char *buf, size_t size);
/* The function named by "0000:BB:DD.F" with this vendor:device; false (error set) otherwise. */
bool pci_lookup(const char *bdf, uint16_t vendor, uint16_t device, struct pci_function *out,
		struct reply *r);
/* BAR i: its base (0 when unassigned), whether it is I/O, its size. */
uint64_t pci_bar(const struct pci_function *f, int bar, bool *io, uint64_t *size);
/* Turn on memory and I/O decoding and bus mastering (the firmware may leave them off). */
void pci_enable(const struct pci_function *f);

/* ---- memory.c: the guest RAM the program may use */
extern uint64_t ram_top;		/* end of RAM below 4 GiB */
/* Pages for device rings and buffers, never given back (a few MiB in all). */
void *page_alloc(size_t pages);
/* The memory agent's region: [region_base, ram_top). */
extern uint64_t region_base;

/* ---- the agents: each answers its own commands and keeps its workload going */
struct agent {
	const char *name;			/* "memcheck", as in qmp-mig-memcheck */
	void (*command)(const struct args *a, struct reply *r);
	/* One small step of background work (NULL: none); true when there is more to do
	 * right away, false when the agent can wait for the next timer tick. */
	bool (*tick)(uint64_t now);
};
extern const struct agent memcheck_agent, mttyio_agent, qmigdev_agent, edu_agent;

#endif
