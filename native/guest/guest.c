/* luofs-guest: a bare-metal guest for live-update tests (a few KiB, no libc).
 *
 * At boot it picks a seed, writes pattern(seed, addr) over every RAM word from
 * PATTERN_BASE to the end of low memory, and prints its boot line. Then it counts
 * PIT ticks at 100 Hz, stores the count in a heartbeat word of RAM at each tick and
 * prints "tick=N seed=S" at every tenth tick (none skipped). A 'c' on the serial port re-checks every
 * pattern word and prints "check=K errors=E words=W first_bad=A".
 *
 * Unhappy paths: an exception prints "fault" and halts; a wrong word is counted and
 * the first bad address printed. A guest resumed over RAM other than its own runs
 * code that is not there, so it faults or stops printing: it cannot look healthy.
 */
#include <stdint.h>

#define COM1 0x3f8
#define PIT_HZ 100
#define PIT_INPUT_HZ 1193182
#define PATTERN_BASE 0x400000u
#define HEARTBEAT ((volatile uint32_t *)0x200000)	/* [0] ticks, [1] seed */
#define PATTERN_MUL 0x9E3779B1u	/* the host computes the same: luofs/vm/guest.py */

volatile uint32_t ticks;
static uint32_t seed, pattern_end, checks;

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) { uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static void putc_serial(char c)
{
	while (!(inb(COM1 + 5) & 0x20))
		;
	outb(COM1, c);
}

static void puts_serial(const char *s) { while (*s) putc_serial(*s++); }

static void put_hex(uint32_t v)
{
	for (int shift = 28; shift >= 0; shift -= 4)
		putc_serial("0123456789abcdef"[(v >> shift) & 15]);
}

static void put_dec(uint32_t v)
{
	char buf[11];
	int i = 0;
	do { buf[i++] = '0' + v % 10; v /= 10; } while (v);
	while (i) putc_serial(buf[--i]);
}

static inline uint32_t pattern(uint32_t addr) { return seed ^ (addr * PATTERN_MUL); }

struct idt_entry { uint16_t off_lo, sel; uint8_t zero, flags; uint16_t off_hi; } __attribute__((packed));
static struct idt_entry idt[256];
extern void irq_timer(void), irq_spurious(void), irq_fault(void);

static void set_gate(int vector, void (*handler)(void))
{
	uint32_t a = (uint32_t)handler;
	idt[vector] = (struct idt_entry){ a & 0xffff, 0x08, 0, 0x8e, a >> 16 };
}

static void setup_interrupts(void)
{
	struct { uint16_t limit; uint32_t base; } __attribute__((packed)) idtr = { sizeof idt - 1, (uint32_t)idt };
	for (int v = 0; v < 256; v++)
		set_gate(v, irq_fault);
	set_gate(32, irq_timer);
	set_gate(39, irq_spurious);
	__asm__ volatile("lidt %0" : : "m"(idtr));
	/* The PICs: IRQ0-7 at vectors 32-39, 8-15 at 40-47; only the timer unmasked. */
	outb(0x20, 0x11); outb(0xa0, 0x11);
	outb(0x21, 0x20); outb(0xa1, 0x28);
	outb(0x21, 4); outb(0xa1, 2);
	outb(0x21, 1); outb(0xa1, 1);
	outb(0x21, 0xfe); outb(0xa1, 0xff);
	uint16_t divisor = PIT_INPUT_HZ / PIT_HZ;
	outb(0x43, 0x34);	/* channel 0, lo/hi byte, rate generator */
	outb(0x40, divisor & 0xff);
	outb(0x40, divisor >> 8);
}

static void full_check(void)
{
	uint32_t errors = 0, first_bad = 0, words = 0;
	for (uint32_t a = PATTERN_BASE; a < pattern_end; a += 4, words++) {
		if (*(volatile uint32_t *)a != pattern(a)) {
			if (!errors++)
				first_bad = a;
		}
	}
	puts_serial("check="); put_dec(++checks);
	puts_serial(" errors="); put_dec(errors);
	puts_serial(" words="); put_dec(words);
	puts_serial(" first_bad="); put_hex(first_bad);
	puts_serial("\n");
}

void guest_fault(void)
{
	puts_serial("fault\n");
}

void guest_main(uint32_t magic, const uint32_t *info)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	seed = (lo ^ (hi << 16) ^ 0x6c756f66u) | 1;
	/* mem_upper: KiB of contiguous RAM from 1 MiB, i.e. the end of low memory. */
	pattern_end = (magic == 0x2BADB002 && (info[0] & 1)) ? 0x100000 + info[2] * 1024 : 0;
	if (pattern_end > 0xfffff000u || pattern_end < PATTERN_BASE)
		pattern_end = pattern_end < PATTERN_BASE ? PATTERN_BASE : 0xfffff000u;
	for (uint32_t a = PATTERN_BASE; a < pattern_end; a += 4)
		*(volatile uint32_t *)a = pattern(a);
	HEARTBEAT[1] = seed;
	puts_serial("luofs-guest boot seed="); put_hex(seed);
	puts_serial(" pattern="); put_hex(PATTERN_BASE);
	puts_serial("-"); put_hex(pattern_end);
	puts_serial("\n");
	setup_interrupts();
	uint32_t seen = 0, next_print = 10;
	__asm__ volatile("sti");
	for (;;) {
		__asm__ volatile("hlt");
		uint32_t t = ticks;
		if (t != seen) {
			seen = t;
			HEARTBEAT[0] = t;
			for (; next_print <= t; next_print += 10) {	/* none skipped by a check */
				puts_serial("tick="); put_dec(next_print);
				puts_serial(" seed="); put_hex(seed);
				puts_serial("\n");
			}
		}
		while (inb(COM1 + 5) & 1)
			if (inb(COM1) == 'c')
				full_check();
	}
}
