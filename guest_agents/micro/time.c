// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * Time from the HPET, which every QEMU x86 machine we boot has at 0xFED00000:
 * a counter with a known period, unlike the TSC whose rate TCG does not tell us.
 * Its counter is migrated with the machine, so time runs on after a migration.
 */
#include "micro.h"

#define HPET_BASE 0xFED00000UL
#define HPET_CAPABILITIES 0x000	/* period in femtoseconds in bits 63:32 */
#define HPET_CONFIG 0x010
#define HPET_COUNTER 0x0F0
#define HPET_ENABLE 0x1

static uint64_t period_fs;

void time_init(void)
{
	period_fs = mmio_read64(HPET_BASE + HPET_CAPABILITIES) >> 32;
	if (!period_fs)
		period_fs = 10000000;	/* 100 MHz, QEMU's; never 0 so time moves */
	mmio_write64(HPET_BASE + HPET_CONFIG, mmio_read64(HPET_BASE + HPET_CONFIG) | HPET_ENABLE);
}

uint64_t now_ns(void)
{
	/* ticks * period_fs / 10^6, split so that the product cannot overflow. */
	uint64_t ticks = mmio_read64(HPET_BASE + HPET_COUNTER);

	return ticks / 1000000 * period_fs + ticks % 1000000 * period_fs / 1000000;
}

void delay_us(uint64_t us)
{
	uint64_t end = now_ns() + us * 1000;

	while (now_ns() < end)
		__asm__ volatile("pause");
}
