#!/bin/busybox sh
# The first manual smoke check's /init (superseded by the AGENT_INIT of trials/sevtrials/assets.py).
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
mount -t debugfs none /sys/kernel/debug
mount -t tmpfs tmpfs /tmp
echo "GUEST-UP $(uname -r) cpus=$(nproc)"
insmod /sevpeb_agent.ko storm_calls=19500 && echo AGENT-LOADED
cat /sys/kernel/debug/sevpeb/stats
sleep 12
echo pause > /sys/kernel/debug/sevpeb/ctl; sleep 0.5
cat /sys/kernel/debug/sevpeb/record > /tmp/rec
echo "RECORD-RUNS $(wc -l < /tmp/rec) PAGES $(awk '{s+=$2} END {print s}' /tmp/rec)"
sed 's/^/REC /' /tmp/rec
cat /sys/kernel/debug/sevpeb/stats
echo bad > /sys/kernel/debug/sevpeb/ctl
/cpl3call; echo "CPL3-EXIT $?"
echo verify > /sys/kernel/debug/sevpeb/ctl
cat /sys/kernel/debug/sevpeb/stats
echo PAUSED-DONE
while true; do sleep 1; done
