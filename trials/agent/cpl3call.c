// SPDX-License-Identifier: GPL-2.0
/*
 * cpl3call: KVM_HC_MAP_GPA_RANGE from ring 3 (VMMCALL, AMD models; VMCALL with
 * argument "vmcall").  KVM answers -KVM_EPERM (-1) without doing anything.
 * Static, no libc: gcc -static -nostdlib -O2 -mgeneral-regs-only -o cpl3call cpl3call.c
 */
static long sys3(long nr, long a, long b, long c)
{
	long r;

	asm volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c)
		     : "rcx", "r11", "memory");
	return r;
}

void _start(void)
{
	char msg[] = "CPL3-CALL ret= 00000000000000000000\n";
	long r, v;
	int i = sizeof(msg) - 3;

	asm volatile("vmmcall" : "=a"(r)
		     : "a"(12L), "b"(0x100000L), "c"(1L), "d"(0L) : "memory");
	v = r < 0 ? -r : r;
	do {
		msg[i--] = '0' + v % 10;
		v /= 10;
	} while (v);
	msg[i] = r < 0 ? '-' : ' ';
	sys3(1, 1, (long)msg, 14);
	sys3(1, 1, (long)(msg + i), sizeof(msg) - 1 - i);
	sys3(60, r == -1 ? 0 : 1, 0, 0);
	for (;;)
		;
}
