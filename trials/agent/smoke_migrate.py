#!/usr/bin/env python3
"""The first manual smoke check, superseded by trials/run.py (sevtrials/guestdriven.py), kept for
reference: source agA and destination agB QEMUs started with
-smp 4 and the smoke initramfs (init-smoke.sh as /init, sevpeb_agent.ko, cpl3call); migrates once
with the agent churning, then compares the destination tracker with the guest record and runs the
negative control (a host-side set the guest did not declare must be detected)."""
import json,socket,time,re
def conn(p):
    s=socket.socket(socket.AF_UNIX); s.connect(p); f=s.makefile('rw'); f.readline()
    def cmd(n,**a):
        f.write(json.dumps({'execute':n,'arguments':a})+'\n'); f.flush()
        while True:
            r=json.loads(f.readline())
            if 'return' in r or 'error' in r: return r
    cmd('qmp_capabilities'); return cmd
A=conn('/tmp/agA.qmp'); B=conn('/tmp/agB.qmp')
t0=time.time()
while 'AGENT-LOADED' not in open('/tmp/agA.serial',errors='replace').read():
    time.sleep(0.5)
    if time.time()-t0>90: raise SystemExit('no agent')
print('agent loaded after', round(time.time()-t0,1),'s')
time.sleep(2)
q0=A('x-query-sev-page-enc-bitmap')['return']; ts=time.time()
print(A('migrate', uri='tcp:127.0.0.1:47123'))
while True:
    m=A('query-migrate')['return']
    if m.get('status') in ('completed','failed','cancelled'): break
    time.sleep(0.05)
q1=A('x-query-sev-page-enc-bitmap')['return']; te=time.time()
print('migrate', m['status'], 'total', m.get('total-time'), 'downtime', m.get('downtime'))
dt=te-ts
rate=[(b-a)/dt for a,b in zip(q0['hypercalls'], q1['hypercalls'])]
print('source hypercalls per vCPU during migration:', [b-a for a,b in zip(q0['hypercalls'], q1['hypercalls'])], 'per s', [round(r,1) for r in rate], 'in-flight max', q1['hypercalls-in-flight-max'])
while 'PAUSED-DONE' not in open('/tmp/agB.serial',errors='replace').read():
    time.sleep(0.5)
    if time.time()-t0>140: raise SystemExit('no PAUSED-DONE on B')
ser=open('/tmp/agB.serial',errors='replace').read()
rec=[tuple(map(int,l.split()[1:3])) for l in ser.splitlines() if l.startswith('REC ')]
qb=B('x-query-sev-page-enc-bitmap', **{'max-ranges':1<<20})['return']
host=[(r['gfn'],r['npages']) for r in qb['shared-ranges']]
print('guest record runs', len(rec), 'host runs', len(host), 'EQUAL' if rec==host else 'DIFFER')
print('dst hypercalls', qb['hypercalls'], 'in-flight max', qb['hypercalls-in-flight-max'], 'migration-control', qb['migration-control'])
# negative control: a host-side set the guest did not declare
B('x-sev-page-enc-bitmap-set', gpa=0x5000000, npages=1, encrypted=False)
qb=B('x-query-sev-page-enc-bitmap', **{'max-ranges':1<<20})['return']
host=[(r['gfn'],r['npages']) for r in qb['shared-ranges']]
print('negative control (host-side set of gfn 0x5000): guest vs host', 'EQUAL (control FAILED)' if rec==host else 'DIFFER (detected)')
for l in ser.splitlines():
    if l.startswith('calls') or 'RECORD' in l or 'sevpeb-agent' in l: print('B:', l.strip())
