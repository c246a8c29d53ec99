"""`run --script`: the container as a POSIX sh script that builds and runs it by hand with standard tools.

`render(spec, rootfs, container_id, cgroup_layout)` returns the text and runs nothing. The script
does what imagetool's runtime does, in the same order, with the commands of shell.py (the ones
`--explain` prints): a fresh upper dir over the image's snapshots in a `mktemp -d` directory,
cgroup directories and limit files, `unshare` for the namespaces, `mount` for the rootfs, /proc,
/dev (each node with `mknod`), /sys and the volumes, `hostname`, masked and read-only paths, then
`setpriv` (capabilities, groups, no_new_privs), `prlimit`, `env -i` and `unshare --root`
(the root switch, the working directory and the user) before the command. A trap removes the
cgroups (killing what is left in them), any mount that escaped the container's mount namespace
and the temporary directory on every way out; the script's exit status is the command's (128+N
when a signal ended it, 137 after an OOM kill).

One difference from the runtime, stated in the script: the root switch is `mount --move . /`
plus a chroot, not `pivot_root`, because every tool after a pivot_root would have to come from the
image (the host's dynamic binaries cannot start once `/` is the image). The old root stays mounted
underneath, out of the container's reach (a chroot escape climbs back into the rootfs mounted
over it). Not rendered: seccomp (no standard tool loads a filter; a comment says so), the
container's own session keyring, a pty (`-t` uses the caller's terminal).

Contract for the caller: `rootfs` is the Mount unpack prepared (overlay lowerdirs relative to
its `cwd`, or a bind of a flattened copy); only its lower layers (or bind source) are used, the
upper/work dirs of the run live in the script's temporary directory. The spec is the one
`specgen.spec_from_image` returns. A user given by name is resolved now, from the image's
topmost layer that has an /etc/passwd (through the safe root).
"""

from __future__ import annotations

import os

from imagetool.errors import ContainerError
from imagetool.mount import Mount
from imagetool.runtime import shell
from imagetool.runtime.shell import q

INIT_EOF = "IMAGETOOL_INIT_EOF"
USER_ANNOTATION = "org.imagetool.user"


def render(spec: dict, rootfs: Mount, container_id: str, cgroup_layout: str | None = None, *,
           image: str | None = None, interactive: bool = False) -> str:
    """The script for `spec` (a runtime spec dict) on `rootfs`, with cgroups named after
    `container_id` on `cgroup_layout` ("v1", "hybrid", "v2"; None: this host's). `image` names
    the image in the header; `interactive` (-i) passes the script's stdin to the command
    (otherwise it gets /dev/null, as with `run`)."""
    linux = spec.get("linux") or {}
    ns_types = [n["type"] for n in linux.get("namespaces", [])]
    if "user" in ns_types:
        raise ContainerError("run --script does not render user namespaces (rootless) yet")
    version, groups, dirs = cgroup_groups(container_id, cgroup_layout)
    lowers = lower_layers(rootfs)
    init = _init_script(spec, rootfs, lowers, ns_types, version)
    delimiter = INIT_EOF
    while delimiter in init.splitlines():
        delimiter += "_"
    out = _header(spec, container_id, image, version)
    out += _cleanup(dirs)
    if interactive:
        out.append("exec 3<&0  # the command's stdin (-i): a background job would get /dev/null")
    out += _rootfs(rootfs, lowers)
    out += _cgroups(version, groups, dirs, linux.get("resources") or {})
    out += ["", "# 4. the container's init, run below as PID 1 of the new namespaces (host tools until its last line)",
            f"cat > \"$RUN/init.sh\" <<'{delimiter}'", init.rstrip("\n"), delimiter]
    flags = shell.unshare_flags(ns_types, fork=False)
    stdin = "<&3 3<&-" if interactive else "</dev/null"
    out += ["",
            "# 5. join the cgroup (a new shell writes its own pid into cgroup.procs), unshare the namespaces,",
            "#    and start the init as the first child there: PID 1 of the new pid namespace (the shell",
            "#    in between reports how it ended: 128+N for signal N, which `unshare --fork` does not for",
            "#    SIGKILL). The script waits for it, and its trap still runs on a signal.",
            "sh -c 'while [ \"$1\" != -- ]; do echo $$ > \"$1/cgroup.procs\"; shift; done; shift; exec \"$@\"' join \\",
            "    $CGROUPS -- \\",
            "    " + shell.join(["unshare", *flags]) + " \\",
            "    sh -c 'exec 3<&0; sh -eu \"$1\" \"$2\" <&3 3<&- & wait $!' pid1 \"$RUN/init.sh\" \"$RUN\" " + stdin + " &",
            "status=0",
            "wait $! || status=$?",
            "exit \"$status\"", ""]
    return "\n".join(out)


# ---------------------------------------------------------------- inputs


def cgroup_groups(container_id: str, layout: str | None) -> tuple[int, dict[str, str], list[str]]:
    """(cgroup version, {controller: group dir} — v2: {"": group dir} —, every group dir to join),
    named as the runtime names them (v1: one group in every hierarchy)."""
    from imagetool.runtime import cgroups

    mgr = cgroups.create(container_id, layout)
    if getattr(mgr, "version", 1) == 2:
        return 2, {"": str(mgr.group)}, [str(mgr.group)]
    groups = {c: str(p) for c, p in sorted(mgr.groups.items())}
    dirs = [str(p) for p, _ in getattr(mgr, "joins", ())] or sorted(set(groups.values()))
    return 1, groups, sorted(set(dirs))


def lower_layers(rootfs: Mount) -> list[str]:
    """The image's read-only layers, top first, as absolute paths (relative overlay lowerdirs are
    resolved against `cwd`, following the short `l/<n>` links); a bind: its source."""
    if rootfs.type != "overlay":
        return [os.path.abspath(rootfs.source)]
    lowerdir = rootfs.option("lowerdir")
    if not lowerdir:
        raise ContainerError(f"the rootfs mount has no lowerdir: {rootfs}")
    base = rootfs.cwd or "/"
    return [os.path.realpath(os.path.join(base, p)) for p in lowerdir.split(":")]


def _user(spec: dict, lowers: list[str]) -> tuple[int, int, list[int]]:
    user = spec["process"].get("user") or {}
    name = (spec.get("annotations") or {}).get(USER_ANNOTATION)
    if not name:
        return int(user.get("uid", 0)), int(user.get("gid", 0)), [int(g) for g in user.get("additionalGids", [])]
    from imagetool import users

    top = next((d for d in lowers if os.path.lexists(os.path.join(d, "etc", "passwd"))), None)
    u = users.lookup(top, name)
    return u.uid, u.gid, list(u.additional_gids)


# ---------------------------------------------------------------- the outer script


def _header(spec: dict, container_id: str, image: str | None, version: int) -> list[str]:
    args = spec["process"]["args"]
    return [
        "#!/bin/sh",
        _comment(f"Container {container_id}" + (f" of {image}" if image else "") + f": {shell.join(args)}"),
        "# built and run by hand, step by step as `imagetool run` does it, with standard tools",
        "# (util-linux: unshare mount setpriv prlimit; coreutils; iproute2) and the cgroup filesystem",
        f"# (cgroup v{version}). Generated by `imagetool run --script`: run it as root with sh. It removes",
        "# what it made (cgroups, mounts, its temporary directory) on every way out; its exit status is",
        "# the command's (128+N when signal N ended it, 137 after an OOM kill).",
        "set -eu",
        '[ "$(id -u)" = 0 ] || { echo "imagetool: error: this script needs root (mounts, cgroups, namespaces)" >&2; exit 125; }',
        "",
        "# this run's upper/ work/ rootfs/ l/ and init.sh (the image's snapshots are only read)",
        'RUN=$(mktemp -d "${TMPDIR:-/tmp}/imagetool-script.XXXXXX")',
    ]


def _comment(text: str) -> str:
    """One comment line: control characters (a newline would end the comment and run the rest)
    shown escaped."""
    return "# " + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _cleanup(dirs: list[str]) -> list[str]:
    if any(q(d) != d for d in dirs):   # CGROUPS is split by the shell: plain words only
        raise ContainerError(f"run --script cannot name a cgroup path that needs quoting: {dirs}")
    return ["",
            "# the container's cgroup" + (": one group in each hierarchy" if len(dirs) > 1 else ""),
            'CGROUPS="' + "\n".join(dirs) + '"',
            "",
            "# kill what is left in a cgroup, then remove it (rmdir waits while the kernel lets go of it),",
            "# and its imagetool/ parent when no other container uses that",
            "cg_remove() {",
            '    [ -d "$1" ] || return 0',
            '    ! [ -e "$1/cgroup.kill" ] || echo 1 > "$1/cgroup.kill"  # v2 (Linux 5.14+): all at once',
            "    i=0",
            '    until rmdir "$1" 2>/dev/null; do',
            '        for pid in $(cat "$1/cgroup.procs" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || :; done',
            "        wait 2>/dev/null || :",
            '        i=$((i + 1)); [ "$i" -lt 100 ] || { echo "imagetool: error: cannot remove $1" >&2; return 1; }',
            "        sleep 0.05",
            "    done",
            '    rmdir "${1%/*}" 2>/dev/null || :',
            "}",
            "cleanup() {",
            "    status=$?",
            "    trap - EXIT HUP INT TERM",
            "    set +e",
            '    for g in $CGROUPS; do cg_remove "$g"; done',
            "    # the mounts live in the container's mount namespace and went with it; this is for one that did not",
            '    ! mountpoint -q "$RUN/rootfs" || umount -l "$RUN/rootfs"',
            '    rm -rf --one-file-system "$RUN"',
            '    exit "$status"',
            "}",
            "trap cleanup EXIT",
            "trap 'exit 129' HUP",
            "trap 'exit 130' INT",
            "trap 'exit 143' TERM"]


def _rootfs(rootfs: Mount, lowers: list[str]) -> list[str]:
    out = ["", "# 1. the root filesystem: the image's layers (top first) under a fresh upper dir of this run",
           'mkdir "$RUN/l" "$RUN/upper" "$RUN/work" "$RUN/rootfs"']
    if rootfs.type == "overlay":
        out += [f'ln -s {q(d)} "$RUN/l/{n}"' for n, d in enumerate(reversed(lowers))]
    return out


def _cgroups(version: int, groups: dict[str, str], dirs: list[str], resources: dict) -> list[str]:
    out = ["", "# 2. create the cgroup" + (" (one group per v1 hierarchy)" if version == 1 else "")]
    if version == 2:
        group = groups[""]
        parent = os.path.dirname(group)
        root = os.path.dirname(parent)
        wanted = [c for c, need in (("cpu", (resources.get("cpu") or {}).get("quota")),
                                    ("memory", (resources.get("memory") or {}).get("limit") is not None),
                                    ("pids", (resources.get("pids") or {}).get("limit"))) if need]
        if wanted:
            out.append(shell.cgroup_enable(root, wanted))
        out.append(shell.cgroup_create(parent))
        if wanted:
            out.append(shell.cgroup_enable(parent, wanted))
    for g in dirs:
        out.append(shell.cgroup_create(g))
        if version == 1 and os.path.exists(os.path.join(os.path.dirname(os.path.dirname(g)), "cpuset.cpus")):
            out.append("# a new cpuset group has no cpus and mems (joining it fails): copy them down")
            for d in (os.path.dirname(g), g):
                for f in ("cpuset.cpus", "cpuset.mems"):
                    out.append(f'[ -n "$(cat {q(d + "/" + f)})" ] || cat {q(os.path.dirname(d) + "/" + f)} > {q(d + "/" + f)}')
    limits = shell.cgroup_limits(version, groups, resources)
    out += ["", "# 3. write the limits"] + (limits or ["# (none)"])
    if version == 2 and resources.get("devices"):
        out.append("# (the device allow-list is a BPF program on v2: no standard command attaches one; /dev holds only the nodes made below)")
    return out


# ---------------------------------------------------------------- the init (inside the namespaces)


def _init_script(spec: dict, rootfs: Mount, lowers: list[str], ns_types: list[str], version: int) -> str:
    proc = spec["process"]
    linux = spec.get("linux") or {}
    annotations = spec.get("annotations") or {}
    out = [
        "# The container's init, PID 1 of its namespaces. Paths are relative to $RUN, then to the rootfs.",
        "set -eu",
        'RUN=$1',
        'UNSHARE=$(command -v unshare)',
        'die() { echo "imagetool: error: $*" >&2; exit 125; }',
        "# a mount point in the rootfs: ordinary directories all the way (made when missing), never a",
        "# symlink of the image (it would point the mount at a host path); `mkpoint P file` makes a file",
        "mkpoint() {",
        '    _p=. _rest=$1',
        '    while [ -n "$_rest" ]; do',
        '        _c=${_rest%%/*}',
        '        if [ "$_c" = "$_rest" ]; then _rest=; else _rest=${_rest#*/}; fi',
        '        [ -n "$_c" ] && [ "$_c" != . ] || continue',
        '        [ "$_c" != .. ] || die "/$1: .. in a mount point"',
        '        _p=$_p/$_c',
        '        [ ! -L "$_p" ] || die "/$1 must be mounted on an ordinary directory, not on a symlink"',
        '        if [ ! -e "$_p" ]; then',
        '            if [ -z "$_rest" ] && [ "${2:-}" = file ]; then : > "$_p"; else mkdir -m 755 "$_p"; fi',
        '        fi',
        '    done',
        '    [ "${2:-}" = file ] || [ -d "$_p" ] || die "/$1 must be mounted on an ordinary directory"',
        "}",
        "# after the mounts: hide a path (an empty read-only tmpfs over a directory, /dev/null over a file)",
        "mask() {",
        '    [ -e "$1" ] && [ ! -L "$1" ] || return 0',
        '    if [ -d "$1" ]; then ' + shell.mask("X", True).replace("X", '"$1"') + '; else '
        + shell.mask("X", False).replace("X", '"$1"') + '; fi',
        "}",
        "# make a path read-only: a bind onto itself, remounted read-only",
        "ro() {",
        '    [ -e "$1" ] && [ ! -L "$1" ] || return 0',
        "    " + shell.readonly("X").replace("X", '"$1"'),
        "}",
        'cd "$RUN"',
        "",
        "# 6. the mounts below stay in this mount namespace (unshare made it private; again, explicitly)",
        shell.make_private("/"),
        "",
        "# 7. the root filesystem",
    ]
    if rootfs.type == "overlay":
        lower = ":".join(f"l/{n}" for n in reversed(range(len(lowers))))
        out.append(shell.mount(Mount("overlay", "overlay", "rootfs",
                                     (f"lowerdir={lower}", "upperdir=upper", "workdir=work"))))
    else:
        out.append(shell.mount(Mount("bind", lowers[0], "rootfs", ("rbind",))))
    out += ["cd rootfs", "", "# 8. /proc, /dev (each device node), /sys and the volumes"]
    for m in spec.get("mounts", []):
        out += _spec_mount(m, version)
    for d in linux.get("devices") or ():
        path = d["path"].lstrip("/")
        out += [f"mkpoint {q(os.path.dirname(path) or '.')}",
                shell.mknod(path, d.get("type", "c"), d["major"], d["minor"], d.get("fileMode", 0o666) & 0o7777)]
    out += ["", "# 9. hostname, loopback, sysctls"]
    if "uts" in ns_types and spec.get("hostname"):
        out.append(shell.hostname(spec["hostname"]))
    if "network" in ns_types and annotations.get("org.imagetool.network") == "loopback":
        out.append(shell.loopback_up())
    for key, value in (linux.get("sysctl") or {}).items():
        out.append(shell.cgroup_write("proc/sys/" + key.replace(".", "/"), value))
    out += ["", "# 10. masked and read-only paths" + (", a read-only root" if (spec.get("root") or {}).get("readonly") else "")]
    out += [f"mask {q(p.lstrip('/'))}" for p in linux.get("maskedPaths", [])]
    out += [f"ro {q(p.lstrip('/'))}" for p in linux.get("readonlyPaths", [])]
    uid, gid, groups = _user(spec, lowers)
    cwd = (proc.get("cwd") or "/").lstrip("/")
    if cwd:
        chown = f" && chown {uid}:{gid} {q(cwd)}" if uid or gid else ""
        out += ["# the working directory, made (for the user) when missing; a symlink is left to resolve in the root",
                f"[ -L {q(cwd)} ] || [ -d {q(cwd)} ] || {{ mkpoint {q(cwd)}{chown}; }}"]
    if (spec.get("root") or {}).get("readonly"):
        out.append(shell.readonly_root("."))
    if linux.get("seccomp"):
        out += ["# linux.seccomp: no standard command loads a seccomp filter, so the command below runs",
                "# WITHOUT the syscall filter imagetool's runtime would load"]
    caps = proc.get("capabilities") or {}
    bounding = caps.get("bounding", [])
    if "CAP_SYS_CHROOT" not in bounding:
        raise ContainerError("run --script enters the root with chroot: it needs CAP_SYS_CHROOT in the "
                             "capability set", hint="run without --script, or keep CAP_SYS_CHROOT")
    out += ["", "# the OOM killer's score: the spec's, else 0 (docker's), never the caller's",
            f"echo {int(proc.get('oomScoreAdj', 0))} > /proc/self/oom_score_adj"]
    out += ["",
            "# 11. switch the root: the rootfs goes over / (runc's --no-pivot; pivot_root would leave no host",
            "#     tool to run the lines below); unshare --root chroots into it as the last step",
            "mount --move . /",
            "",
            "# 12. drop privileges and exec: setpriv (gid, groups, capabilities, no_new_privs), prlimit",
            "#     (rlimits), env -i (the environment), unshare --root/--wd/--setuid (chroot, workdir, uid).",
            "#     Not done by hand: a session keyring of its own, a pty in the container's devpts (-t).",
            "exec " + shell.join(["setpriv", *shell.setpriv_options(
                gid=gid, groups=groups, bounding=bounding, inheritable=caps.get("inheritable", []),
                no_new_privs=bool(proc.get("noNewPrivileges")))]) + " -- \\"]
    rl = shell.rlimit_options(proc.get("rlimits") or ())
    if rl:
        out.append("    " + shell.join(["prlimit", *rl]) + " -- \\")
    out.append("    " + shell.join(["env", "-i", *proc.get("env", [])]) + " \\")
    setuid = [f"--setuid={uid}"] if uid else []
    out.append('    "$UNSHARE" ' + shell.join(["--root=.", f"--wd=/{cwd}", *setuid, "--", *proc["args"]]))
    return "\n".join(out) + "\n"


def _spec_mount(m: dict, version: int) -> list[str]:
    """A spec mount as mkpoint + mount lines (relative to the rootfs); /dev's tmpfs with its nodes;
    `cgroup`: the container's own cgroups (its cgroup namespace's view), read-only."""
    from imagetool.runtime import cgroups
    from imagetool.runtime import mounts as rt

    dest = m["destination"].lstrip("/")
    mtype = m.get("type") or "none"
    options = tuple(m.get("options") or ())
    if mtype in ("cgroup", "cgroup2"):
        return [f"mkpoint {q(dest)}", *shell.mount_cgroupfs(dest, None if version == 2 else cgroups.hierarchies())]
    if mtype == "bind" or "bind" in options or "rbind" in options:
        src = m["source"]
        return [f"if [ -d {q(src)} ]; then mkpoint {q(dest)}; else mkpoint {q(dest)} file; fi",
                shell.mount(Mount("bind", src, dest, options))]
    out = [f"mkpoint {q(dest)}", shell.mount(Mount(mtype, m.get("source") or mtype, dest, options))]
    if mtype == "mqueue":
        out[-1] += " 2>/dev/null || :  # a kernel without POSIX message queues"
    if mtype == "tmpfs" and dest == "dev":
        for name, major, minor, *mode in rt.DEVICES:
            out.append(shell.mknod(f"dev/{name}", "c", major, minor, mode[0] if mode else 0o666))
        out += [shell.symlink(target, f"dev/{name}") for name, target in rt.DEV_LINKS]
        out += [shell.mkdir(f"dev/{d}", 0o755) for d in getattr(rt, "DEV_DIRS", ("pts", "shm", "mqueue"))]
    return out
