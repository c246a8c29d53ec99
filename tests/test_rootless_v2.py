"""Rootless on cgroup v2 with a delegated subtree (issue 13): in the v2-only VM a test user with a
subordinate range owns a cgroup (as systemd's Delegate=yes gives a user session), and the seed's
memory-limit demonstration passes as that user: `run -m 7m` of a process allocating more is
OOM-killed (137), a smaller one passes; run -d, exec (joining the container's cgroup), stop and rm
work as the user there. The limit is written in the user's own subtree
(<own>/imagetool/<id>/memory.max), the user's shell moved into the leaf <own>/init first (the "no
internal processes" rule), and nothing is left after."""

from __future__ import annotations

from tests import v2vm

GUEST_SCRIPT = r"""
set -u
echo "RESULT started 1"
for t in newuidmap newgidmap useradd runuser; do command -v $t >/dev/null || echo "RESULT missing_$t 1"; done
mkdir -p /opt/it && cp -r /host/src /host/site /opt/it/ && chmod -R a+rX /opt/it
export PYTHONPATH=/opt/it/site:/opt/it/src IMAGETOOL_FIXTURE_CACHE=/var/tmp/fx PYTHONDONTWRITEBYTECODE=1
useradd --create-home --shell /bin/sh rl || exit 91
sed -i '/^rl:/d' /etc/subuid /etc/subgid
usermod --add-subuids 200000-265535 --add-subgids 200000-265535 rl || exit 92
cd /opt/it/src
python3 -c "from tests.runhelpers import add_image; from fixtures.images import busybox_image; add_image('/home/rl/st', busybox_image(), 'docker.io/library/busybox:latest')" || exit 90
chown -R rl:rl /home/rl/st
# delegate a subtree to the user: memory and pids enabled above it, the group and its files its own
G=/sys/fs/cgroup/rl.slice
mkdir $G
echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
chown rl:rl $G $G/cgroup.procs $G/cgroup.subtree_control $G/cgroup.threads
# as the user, its shell in the delegated group (moved there by root, as a login manager does)
asuser() { ( if [ -d $G/init ]; then echo $BASHPID > $G/init/cgroup.procs; else echo $BASHPID > $G/cgroup.procs; fi; exec runuser -u rl -- env -i HOME=/home/rl PATH=/usr/bin:/bin:/usr/sbin:/sbin PYTHONPATH=$PYTHONPATH PYTHONDONTWRITEBYTECODE=1 sh -c "$1" ); }
it='python3 -m imagetool --store /home/rl/st'
asuser "$it run --rm --network none -m 7m busybox sh -c 'data=\$(head -c 7500000 /dev/urandom)'" 2>/tmp/oom.err; echo "RESULT oom $?"
cat /tmp/oom.err
asuser "$it run --rm --network none -m 7m busybox sh -c 'data=\$(head -c 2000000 /dev/urandom)'"; echo "RESULT small $?"
out=$(asuser "$it run --rm --network none --explain -m 7m busybox cat /sys/fs/cgroup/memory.max" 2>/tmp/explain.err); echo "RESULT sysfscg $out"
grep -q "echo 7340032 > $G/imagetool/[0-9a-f]*/memory.max" /tmp/explain.err; echo "RESULT limit_in_user_subtree $?"
asuser "$it run --rm --network none --pids-limit 20 busybox sh -c 'i=0; while [ \$i -lt 40 ]; do sleep 2 & i=\$((i+1)); done; wait'" 2>/tmp/pids.err
grep -q "can't fork" /tmp/pids.err; echo "RESULT pids $?"
asuser "$it run --rm --network none busybox sh -c 'echo \$\$; id -u'" > /tmp/id.out; echo "RESULT pid1 $(head -1 /tmp/id.out)"
echo "RESULT uid0 $(tail -1 /tmp/id.out)"
asuser "$it run -d --name svc --network none -m 20m busybox sleep 300" >/dev/null; echo "RESULT detached $?"
echo "RESULT exec_cgroup $(asuser "$it exec svc cat /proc/self/cgroup")"
echo "RESULT exec_limit $(asuser "$it exec svc cat /sys/fs/cgroup/memory.max")"
asuser "$it stop -t 1 svc" >/dev/null; asuser "$it rm svc" >/dev/null; echo "RESULT stop_rm $?"
grep -q "cannot apply" /tmp/oom.err; echo "RESULT warned $?"
echo "RESULT leaf $(test -d $G/init && echo present || echo absent)"
echo "RESULT leftover_groups $(find $G/imagetool -mindepth 1 -maxdepth 1 -type d 2>/dev/null | wc -l)"
echo "RESULT parent_group $(test -d $G/imagetool && echo present || echo absent)"
echo "RESULT leftover_containers $(ls /home/rl/st/containers | wc -l)"
echo "RESULT leftover_procs $(ps -eo uid= | awk '$1 == '"$(id -u rl)"' || ($1 >= 200000 && $1 < 265536)' | wc -l)"
"""


def test_rootless_memory_limit_with_delegated_cgroup(tmp_path):
    """The seed's 7 MB demonstration as an ordinary user with a delegated cgroup v2 subtree."""
    out = v2vm.boot(tmp_path, GUEST_SCRIPT, started_marker="RESULT started")
    results = v2vm.results(out)
    missing = [k for k in results if k.startswith("missing_")]
    assert not missing, f"the guest lacks {missing}"
    assert results["oom"] == "137"
    assert "container was killed: out of memory" in out
    assert results["small"] == "0"
    assert results["sysfscg"] == "7340032"             # the container's own cgroup at /sys/fs/cgroup
    assert results["limit_in_user_subtree"] == "0"     # written below the user's own cgroup
    assert results["pids"] == "0"
    assert results["pid1"] == "1" and results["uid0"] == "0"
    assert results["detached"] == "0" and results["stop_rm"] == "0"   # run -d, exec, stop, rm as the user
    assert results["exec_cgroup"] == "0::/"            # exec joined the container's cgroup (its namespace's root)
    assert results["exec_limit"] == str(20 << 20)
    assert results["warned"] == "1"                    # delegated: no "limits cannot apply" line
    assert results["leaf"] == "present"                # the user's processes moved into <own>/init
    assert results["leftover_groups"] == "0"
    assert results["parent_group"] == "absent"
    assert results["leftover_containers"] == "0"
    assert results["leftover_procs"] == "0"
