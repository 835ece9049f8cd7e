// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * A 1 kHz local APIC timer that wakes the guest from HLT.  The legacy PIC is
 * masked: no device interrupt is ever taken, the devices are polled.
 */
#include "micro.h"

#define LAPIC 0xFEE00000UL
#define LAPIC_SVR 0x0F0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INITIAL 0x380
#define LAPIC_TIMER_DIVIDE 0x3E0
#define TIMER_VECTOR 32
#define TIMER_PERIODIC (1u << 17)
#define LAPIC_TIMER_CURRENT 0x390
#define TIMER_DIVIDE_BY_1 0xB
#define LVT_MASKED (1u << 16)

struct gate {
	uint16_t offset_low, selector;
	uint8_t ist, type;
	uint16_t offset_mid;
	uint32_t offset_high, reserved;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(16)));
extern char irq_stub[], fault_stub[];

static void set_gate(int vector, void *handler)
{
	uint64_t a = (uint64_t)handler;

	idt[vector] = (struct gate){ (uint16_t)a, 0x08, 0, 0x8E, (uint16_t)(a >> 16),
				     (uint32_t)(a >> 32), 0 };
}

/* The APIC timer's rate is the machine's choice: count it against the HPET for 1 ms. */
static uint32_t timer_counts_per_ms(void)
{
	uint32_t counted;

	mmio_write32(LAPIC + LAPIC_TIMER_DIVIDE, TIMER_DIVIDE_BY_1);
	mmio_write32(LAPIC + LAPIC_LVT_TIMER, TIMER_VECTOR | LVT_MASKED);
	mmio_write32(LAPIC + LAPIC_TIMER_INITIAL, 0xFFFFFFFF);
	delay_us(1000);
	counted = 0xFFFFFFFF - mmio_read32(LAPIC + LAPIC_TIMER_CURRENT);
	mmio_write32(LAPIC + LAPIC_TIMER_INITIAL, 0);
	return counted ? counted : 1000000;
}

void interrupts_init(void)
{
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) pointer = { sizeof(idt) - 1, (uint64_t)idt };
	uint32_t period;

	for (int v = 0; v < 256; v++)
		set_gate(v, v < 32 ? fault_stub : irq_stub);
	__asm__ volatile("lidt %0" : : "m"(pointer));
	outb(0x21, 0xFF);	/* mask both 8259s */
	outb(0xA1, 0xFF);
	mmio_write32(LAPIC + LAPIC_SVR, 0x100 | 0xFF);
	period = timer_counts_per_ms();
	mmio_write32(LAPIC + LAPIC_LVT_TIMER, TIMER_VECTOR | TIMER_PERIODIC);
	mmio_write32(LAPIC + LAPIC_TIMER_INITIAL, period);
}

void idle(void)
{
	__asm__ volatile("sti; hlt; cli" : : : "memory");
}

void micro_fault(const uint64_t *frame)
{
	char msg[160];
	int n = snprintf(msg, sizeof(msg),
			 "qmp-mig-micro: CPU exception, stopped (frame %lx %lx %lx)\n",
			 (unsigned long)frame[0], (unsigned long)frame[1], (unsigned long)frame[2]);

	serial_write(msg, (size_t)n);
}
