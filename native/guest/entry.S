/* Entry of the bare-metal test guest: a multiboot header (QEMU's -kernel loads it),
 * a flat GDT of our own (multiboot leaves GDTR undefined, and an interrupt's iret
 * reloads CS from it), the timer interrupt, and a catch-all for anything else. */

	.set MB_MAGIC, 0x1BADB002
	.set MB_FLAGS, 0x00000003	/* page-aligned modules, memory info */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC, MB_FLAGS, -(MB_MAGIC + MB_FLAGS)

	.section .data
	.align 8
gdt:
	.quad 0
	.quad 0x00CF9A000000FFFF	/* 0x08: flat 32-bit code */
	.quad 0x00CF92000000FFFF	/* 0x10: flat data */
gdtr:
	.word 3 * 8 - 1
	.long gdt

	.section .text
	.global _start
_start:
	cli
	mov $stack_top, %esp
	lgdt gdtr
	ljmp $0x08, $1f
1:	mov $0x10, %cx
	mov %cx, %ds
	mov %cx, %es
	mov %cx, %fs
	mov %cx, %gs
	mov %cx, %ss
	push %ebx		/* multiboot info */
	push %eax		/* multiboot magic */
	call guest_main
2:	cli
	hlt
	jmp 2b

	.global irq_timer
irq_timer:			/* PIT through the PIC's IRQ0, remapped to vector 32 */
	incl ticks
	push %eax
	mov $0x20, %al
	out %al, $0x20		/* end of interrupt */
	pop %eax
	iret

	.global irq_spurious
irq_spurious:			/* IRQ7 without a cause: no end of interrupt */
	iret

	.global irq_fault
irq_fault:			/* an exception: the guest is broken; say so and stop */
	cli
	mov $stack_top, %esp
	call guest_fault
3:	hlt
	jmp 3b

	.section .bss
	.align 16
	.space 16384
stack_top:
	.section .note.GNU-stack, "", @progbits
