#!/usr/bin/env python3
"""KVM's SEV migration interface under TCG (qemu-patches: target/i386/tcg).

A 64 KiB real-mode "BIOS" makes the guest calls and stores each RAX at 0x500:
VMMCALL map 4 pages shared, VMCALL map 1 page private, VMMCALL nr 99,
VMMCALL misaligned gpa, WRMSR MIGRATION_CONTROL=1, CPUID 0x40000001 EAX,
CPUID 0x40000000 EBX, then 0xaa55 as "done".  Checks the values and the
object's state; then the negative controls: the same code without the
object (VMMCALL is #UD: nothing after it runs, nothing is recorded), and
with the object but the CPUID bits off (EAX of 0x40000001 is 0).

usage: tcg_hypercall.py QEMU FW_DIR...   (last line: N passed, N failed)
"""
import json, socket, struct, subprocess, sys, tempfile, time

def bios():
    def mov(reg, v): return bytes([0x66, 0xb8 + reg]) + struct.pack('<I', v)
    EAX, ECX, EDX, EBX = 0, 1, 2, 3
    def st(a): return bytes([0x66, 0xa3]) + struct.pack('<H', a)
    VMMCALL, VMCALL = b'\x0f\x01\xd9', b'\x0f\x01\xc1'
    c = mov(EAX, 12) + mov(EBX, 0x100000) + mov(ECX, 4) + mov(EDX, 0) + VMMCALL + st(0x500)
    c += mov(EAX, 12) + mov(EBX, 0x200000) + mov(ECX, 1) + mov(EDX, 0x10) + VMCALL + st(0x504)
    c += mov(EAX, 99) + VMMCALL + st(0x508)
    c += mov(EAX, 12) + mov(EBX, 0x100001) + mov(ECX, 1) + mov(EDX, 0) + VMMCALL + st(0x50c)
    c += mov(ECX, 0x4b564d08) + mov(EAX, 1) + mov(EDX, 0) + b'\x0f\x30'
    c += mov(EAX, 0x40000001) + mov(ECX, 0) + b'\x0f\xa2' + st(0x510)
    c += mov(EAX, 0x40000000) + b'\x0f\xa2' + bytes([0x66, 0x89, 0x1e]) + struct.pack('<H', 0x514)
    c += mov(EAX, 0xaa55) + st(0x518) + b'\xf4\xeb\xfd'
    img = bytearray(b'\xf4' * 65536)
    img[0:len(c)] = c
    img[0xfff0:0xfff3] = bytes([0xe9]) + struct.pack('<H', (0 - 0xfff3) & 0xffff)
    return bytes(img)

class QMP:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX); self.s.settimeout(10)
        for _ in range(100):
            try: self.s.connect(path); break
            except OSError: time.sleep(0.1)
        self.f = self.s.makefile('rw'); self.f.readline()
        self.cmd('qmp_capabilities')
    def cmd(self, name, **args):
        self.f.write(json.dumps({'execute': name, 'arguments': args}) + '\n'); self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if 'return' in r or 'error' in r: return r

def run(qemu, fw, obj, cpu):
    d = tempfile.mkdtemp(prefix='tcghc-')
    open(f'{d}/bios.bin', 'wb').write(bios())
    sock = f'{d}/qmp'
    argv = [qemu, '-M', 'q35', '-m', '64', '-accel', 'tcg', '-nodefaults', '-display', 'none',
            '-cpu', cpu, '-bios', f'{d}/bios.bin', '-qmp', f'unix:{sock},server=on,wait=off']
    if obj: argv += ['-object', 'sev-page-enc-bitmap,id=peb0']
    p = subprocess.Popen(argv, stderr=subprocess.PIPE)
    try:
        q = QMP(sock); time.sleep(1.5)
        out = q.cmd('human-monitor-command', **{'command-line': 'xp /7wx 0x500'})['return']
        words = [int(w, 16) for line in out.splitlines() for w in line.split(':')[1].split()]
        info = q.cmd('x-query-sev-page-enc-bitmap').get('return') if obj else None
        return words, info
    finally:
        p.kill(); p.wait()

def main():
    qemu = sys.argv[1]
    fw = []
    ok = bad = 0
    def check(name, cond, detail):
        nonlocal ok, bad
        print(('PASS ' if cond else 'FAIL ') + name + ': ' + detail)
        if cond: ok += 1
        else: bad += 1
    cpu = 'qemu64,kvm-hc-map-gpa-range=on,kvm-migration-control=on'
    w, info = run(qemu, fw, True, cpu)
    u32 = lambda v: v & 0xffffffff
    check('map shared (VMMCALL)', w[0] == 0, hex(w[0]))
    check('map private (VMCALL)', w[1] == 0, hex(w[1]))
    check('unknown nr -> -KVM_ENOSYS', w[2] == u32(-1000), hex(w[2]))
    check('misaligned -> -KVM_EINVAL', w[3] == u32(-22), hex(w[3]))
    check('CPUID 0x40000001 EAX = bits 16,17', w[4] == 0x30000, hex(w[4]))
    check('CPUID 0x40000000 EBX = "KVMK"', w[5] == 0x4b4d564b, hex(w[5]))
    check('ran to the end', w[6] == 0xaa55, hex(w[6]))
    rng = [(r['gfn'], r['npages']) for r in info['shared-ranges']]
    check('state: gfn 0x100+4 shared only', rng == [(0x100, 4)], str(rng))
    check('MIGRATION_CONTROL via WRMSR', info['migration-control'] == 1, str(info['migration-control']))
    check('per-vCPU count (3 KVM_HC_MAP_GPA_RANGE calls)', info['hypercalls'] == [3], str(info['hypercalls']))
    check('in-flight max', info['hypercalls-in-flight-max'] == 1, str(info['hypercalls-in-flight-max']))
    w, _ = run(qemu, fw, False, cpu)
    check('no object: VMMCALL is #UD (nothing stored)', w[0] == 0 and w[6] == 0, str([hex(x) for x in w]))
    w, info = run(qemu, fw, True, 'qemu64')
    check('bits off in the model: CPUID 0x40000001 EAX = 0', w[4] == 0 and w[6] == 0xaa55, hex(w[4]))
    print(f'{ok} passed, {bad} failed')
    sys.exit(1 if bad else 0)

main()
