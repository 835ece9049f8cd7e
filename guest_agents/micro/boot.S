/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Entry of the micro guest.  QEMU's multiboot loader (-kernel) enters _start in
 * 32-bit protected mode with paging off, EBX pointing at the multiboot info.
 * We identity-map the first 4 GiB with 2 MiB pages, switch to long mode (the
 * memory pattern is 64-bit arithmetic: 64-bit code runs it several times
 * faster than 32-bit code under TCG), enable SSE (gcc uses it) and call
 * micro_main(info).  Interrupts stay disabled for the guest's whole life: it
 * polls its devices, so it needs no IDT.
 */
#define MB_MAGIC 0x1BADB002
#define MB_FLAGS 0x00000003	/* page-aligned modules, memory information */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

	.section .boot, "ax"
	.code32
	.globl _start
_start:
	cli
	mov	$boot_stack_top, %esp
	mov	%ebx, %esi			/* multiboot info, kept across the loops */

	/* Zero .bss (page tables included). */
	mov	$__bss_start, %edi
	mov	$__bss_end, %ecx
	sub	%edi, %ecx
	xor	%eax, %eax
	cld
	rep stosb
	mov	%esi, multiboot_info

	/* PML4[0] -> PDPT; PDPT[0..3] -> 4 page directories; 2048 x 2 MiB pages. */
	mov	$page_pdpt, %eax
	or	$3, %eax
	mov	%eax, page_pml4
	mov	$page_dirs, %eax
	or	$3, %eax
	xor	%ecx, %ecx
1:	mov	%eax, page_pdpt(,%ecx,8)
	add	$4096, %eax
	inc	%ecx
	cmp	$4, %ecx
	jne	1b
	mov	$0x83, %eax			/* present, writable, 2 MiB page */
	xor	%edx, %edx			/* high half of the address */
	xor	%ecx, %ecx
2:	mov	%eax, page_dirs(,%ecx,8)
	mov	%edx, page_dirs+4(,%ecx,8)
	add	$0x200000, %eax
	adc	$0, %edx
	inc	%ecx
	cmp	$2048, %ecx
	jne	2b

	mov	%cr4, %eax
	or	$(1 << 5 | 1 << 9 | 1 << 10), %eax	/* PAE, OSFXSR, OSXMMEXCPT */
	mov	%eax, %cr4
	mov	$page_pml4, %eax
	mov	%eax, %cr3
	mov	$0xC0000080, %ecx		/* EFER */
	rdmsr
	or	$(1 << 8), %eax			/* LME */
	wrmsr
	mov	%cr0, %eax
	and	$~(1 << 2), %eax		/* EM off: x87/SSE usable */
	or	$(1 << 31 | 1 << 1), %eax	/* PG, MP */
	mov	%eax, %cr0
	lgdt	gdt_pointer
	ljmp	$0x08, $long_mode

	.code64
long_mode:
	mov	$0x10, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %ss
	xor	%ax, %ax
	mov	%ax, %fs
	mov	%ax, %gs
	mov	$boot_stack_top, %rsp
	xor	%rbp, %rbp
	mov	multiboot_info(%rip), %edi
	call	micro_main
3:	hlt
	jmp	3b

	.section .rodata
	.align 16
gdt:
	.quad	0
	.quad	0x00AF9A000000FFFF		/* 0x08: 64-bit code */
	.quad	0x00CF92000000FFFF		/* 0x10: data */
gdt_end:
gdt_pointer:
	.word	gdt_end - gdt - 1
	.long	gdt

	.data
	.align 8
	.globl multiboot_info
multiboot_info:
	.long	0

	.section .bss
	.align 4096
	.globl page_pml4, page_pdpt
page_pml4:	.skip 4096
page_pdpt:	.skip 4096
page_dirs:	.skip 4 * 4096
	.align 16
boot_stack:	.skip 65536
boot_stack_top:

/*
 * Interrupts: the guest sleeps in HLT between steps of its workloads, woken by
 * the local APIC timer (interrupts.c), so an idle micro guest costs its host
 * almost nothing.  A timer interrupt only needs its EOI; a CPU exception is a
 * bug of ours, reported on the console.
 */
	.text
	.code64
	.globl irq_stub, fault_stub
irq_stub:
	push	%rax
	mov	$0xFEE000B0, %eax		/* local APIC EOI register */
	movl	$0, (%rax)
	pop	%rax
	iretq
fault_stub:
	cli
	mov	%rsp, %rdi			/* error code or RIP: the frame, for the report */
	and	$~15, %rsp
	call	micro_fault
4:	hlt
	jmp	4b

	.section .note.GNU-stack, "", @progbits
