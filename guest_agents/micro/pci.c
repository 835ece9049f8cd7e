// SPDX-License-Identifier: GPL-2.0-or-later
/*
 * PCI configuration space through the 0xCF8/0xCFC ports (mechanism #1, which
 * every QEMU x86 machine has).  BARs are used where the firmware put them.
 */
#include "micro.h"

#define CONFIG_ADDRESS 0xCF8
#define CONFIG_DATA 0xCFC
#define PCI_COMMAND 0x04
#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_HEADER_TYPE 0x0E
#define PCI_BAR0 0x10

static void select(const struct pci_function *f, uint8_t off)
{
	outl(CONFIG_ADDRESS, 0x80000000u | (uint32_t)f->bus << 16 | (uint32_t)f->dev << 11 |
			     (uint32_t)f->fn << 8 | (off & 0xFC));
}

uint32_t pci_read32(const struct pci_function *f, uint8_t off)
{
	select(f, off);
	return inl(CONFIG_DATA);
}

uint16_t pci_read16(const struct pci_function *f, uint8_t off)
{
	select(f, off);
	return inw(CONFIG_DATA + (off & 2));
}

void pci_write32(const struct pci_function *f, uint8_t off, uint32_t v)
{
	select(f, off);
	outl(CONFIG_DATA, v);
}

void pci_write16(const struct pci_function *f, uint8_t off, uint16_t v)
{
	select(f, off);
	outw(CONFIG_DATA + (off & 2), v);
}

/* Buses behind bridges are numbered by the firmware; scanning all 256 costs little. */
int pci_find(uint16_t vendor, uint16_t device, struct pci_function *out, int max)
{
	int found = 0;

	for (int bus = 0; bus < 256; bus++) {
		for (int dev = 0; dev < 32; dev++) {
			for (int fn = 0; fn < 8; fn++) {
				struct pci_function f = { (uint8_t)bus, (uint8_t)dev, (uint8_t)fn, 0, 0 };
				uint32_t id = pci_read32(&f, 0);

				if ((id & 0xFFFF) == 0xFFFF) {
					if (fn == 0)
						break;	/* no device: no functions */
					continue;
				}
				f.vendor = (uint16_t)id;
				f.device = (uint16_t)(id >> 16);
				if (f.vendor == vendor && f.device == device && found < max)
					out[found++] = f;
				if (fn == 0 && !(pci_read16(&f, PCI_HEADER_TYPE) & 0x80))
					break;	/* single-function device */
			}
		}
	}
	return found;
}

void pci_bdf(const struct pci_function *f, char *buf, size_t size)
{
	snprintf(buf, size, "0000:%02x:%02x.%x", f->bus, f->dev, f->fn);
}

static int hex_field(const char *s, int digits)
{
	int v = 0;

	for (int i = 0; i < digits; i++) {
		int d = hex_digit(s[i]);

		if (d < 0)
			return -1;
		v = v * 16 + d;
	}
	return v;
}

bool pci_lookup(const char *bdf, uint16_t vendor, uint16_t device, struct pci_function *out,
		struct reply *r)
{
	int bus, dev, fn;
	uint32_t id;

	if (!bdf) {
		reply_error(r, "missing --bdf (see 'list')");
		return false;
	}
	if (strlen(bdf) != 12 || strncmp(bdf, "0000:", 5) || bdf[7] != ':' || bdf[10] != '.' ||
	    (bus = hex_field(bdf + 5, 2)) < 0 || (dev = hex_field(bdf + 8, 2)) < 0 || dev > 31 ||
	    (fn = hex_field(bdf + 11, 1)) < 0 || fn > 7) {
		reply_error(r, "invalid --bdf '%s'", bdf);
		return false;
	}
	*out = (struct pci_function){ (uint8_t)bus, (uint8_t)dev, (uint8_t)fn, 0, 0 };
	id = pci_read32(out, 0);
	out->vendor = (uint16_t)id;
	out->device = (uint16_t)(id >> 16);
	if (out->vendor != vendor || out->device != device) {
		reply_error(r, "%s is not a %04x:%04x device", bdf, vendor, device);
		return false;
	}
	return true;
}

uint64_t pci_bar(const struct pci_function *f, int bar, bool *io, uint64_t *size)
{
	uint8_t off = (uint8_t)(PCI_BAR0 + 4 * bar);
	uint32_t lo = pci_read32(f, off), hi = 0, mask_lo, mask_hi = 0xFFFFFFFF;
	uint16_t command = pci_read16(f, PCI_COMMAND);
	bool is64;
	uint64_t base, mask;

	*io = lo & 1;
	is64 = !*io && (lo & 6) == 4;
	if (is64)
		hi = pci_read32(f, off + 4);
	/* Size the BAR with decoding off, so the probe address decodes nothing. */
	pci_write16(f, PCI_COMMAND, command & ~(PCI_COMMAND_IO | PCI_COMMAND_MEMORY));
	pci_write32(f, off, 0xFFFFFFFF);
	mask_lo = pci_read32(f, off);
	pci_write32(f, off, lo);
	if (is64) {
		pci_write32(f, off + 4, 0xFFFFFFFF);
		mask_hi = pci_read32(f, off + 4);
		pci_write32(f, off + 4, hi);
	}
	pci_write16(f, PCI_COMMAND, command);
	if (*io) {
		base = lo & ~3u;
		mask = (mask_lo & ~3u) | 0xFFFF0000u;
		mask |= 0xFFFFFFFF00000000ULL;
	} else {
		base = ((uint64_t)hi << 32) | (lo & ~0xFu);
		mask = ((uint64_t)mask_hi << 32) | (mask_lo & ~0xFu);
		if (!is64)
			mask |= 0xFFFFFFFF00000000ULL;
	}
	*size = mask ? ~mask + 1 : 0;
	if (!mask_lo || *size == 0)
		return 0;	/* not implemented */
	return base;
}

void pci_enable(const struct pci_function *f)
{
	pci_write16(f, PCI_COMMAND, pci_read16(f, PCI_COMMAND) | PCI_COMMAND_IO |
				    PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
}
