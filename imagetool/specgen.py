"""Build the OCI runtime spec (config.json, ociVersion 1.0.2) from an image config and run options.

The spec is the one description of a container: imagetool's own runtime executes it, and the
same dict written as `config.json` runs unchanged under `runc run` / `crun run`.
"""

from __future__ import annotations

from pathlib import Path

from imagetool.errors import ImagetoolError
from imagetool.runtime import capabilities, devices, seccomp
from imagetool.runtime import spec as S
from imagetool.users import lookup as lookup_user

OCI_VERSION = "1.0.2"
USER_ANNOTATION = "org.imagetool.user"  # the user as given, when it names a user by name
EXPOSED_ANNOTATION = "org.imagetool.exposed-ports"  # with -P: the image's ExposedPorts ("80/tcp,53/udp")
DEFAULT_PIDS_LIMIT = 2048  # podman's; --pids-limit -1 (or 0) for none
DEFAULT_UMASK = 0o022      # runc's and docker's: the container never inherits imagetool's umask


def _opt(opts, name, default=None):
    return getattr(opts, name, default) if opts is not None else default


def process_args(config, opts=None) -> list[str]:
    """Entrypoint + Cmd with docker's override rules (--entrypoint resets the image's Cmd)."""
    entrypoint = list(getattr(config, "entrypoint", None) or [])
    cmd = list(getattr(config, "cmd", None) or [])
    ep_opt = _opt(opts, "entrypoint")
    if ep_opt is not None:
        entrypoint = [ep_opt] if ep_opt else []
        cmd = []
    command = list(_opt(opts, "command") or [])
    args = entrypoint + (command if command else cmd)
    if not args:
        raise ImagetoolError("no command specified", hint="give a COMMAND or use an image with Cmd/Entrypoint")
    return args


def spec_from_image(config, opts=None, rootfs: str = "rootfs", *, rootfs_dir: Path | str | None = None,
                    hostname: str | None = None) -> dict:
    """The runtime spec for `config` (an ImageConfig) and `opts` (RunOptions or None for defaults).

    `rootfs` is `root.path` in the spec (relative to the bundle). When the user is given by name
    it is resolved against `rootfs_dir`/etc/passwd if given; otherwise uid/gid stay 0 and the name
    is kept in the annotation `org.imagetool.user` for imagetool's init to resolve inside the
    container. `hostname` is the default when the options give none.
    """
    _refuse_nul(config)
    tty = bool(_opt(opts, "tty", False))
    env = list(getattr(config, "env", None) or [])
    extra: list[str] = []
    for path in _opt(opts, "env_files") or []:
        extra += S.read_env_file(path)
    extra += list(_opt(opts, "env") or [])
    _refuse_nul_in("environment", extra)
    env = S.merge_env(env, extra)
    if S.env_get(env, "PATH") is None:
        env.insert(0, f"PATH={S.DEFAULT_PATH}")
    host = _opt(opts, "hostname") or hostname or "imagetool"
    if _opt(opts, "hostname"):   # one rule for a hostname, whatever the network (sethostname, /etc files)
        from imagetool.network.hosts import validate

        validate(host, (), ())
    if S.env_get(env, "HOSTNAME") is None:
        env.append(f"HOSTNAME={host}")
    if tty and S.env_get(env, "TERM") is None:
        env.append("TERM=xterm")

    cwd = _opt(opts, "workdir") or getattr(config, "working_dir", None) or "/"
    if not cwd.startswith("/"):
        raise ImagetoolError(f"the working directory {cwd!r} is invalid: it must be an absolute path")

    user_text = _opt(opts, "user") or getattr(config, "user", None) or ""
    annotations: dict[str, str] = {}
    user = {"uid": 0, "gid": 0, "umask": DEFAULT_UMASK}
    if user_text:
        uname = user_text.partition(":")[0]
        gname = user_text.partition(":")[2]
        if rootfs_dir is not None or (uname.isdigit() and (not gname or gname.isdigit())):
            u = lookup_user(rootfs_dir, user_text)
            user = {"uid": u.uid, "gid": u.gid, "umask": DEFAULT_UMASK}
            if u.additional_gids:
                user["additionalGids"] = list(u.additional_gids)
            if u.home and S.env_get(env, "HOME") is None:
                env.append(f"HOME={u.home}")
        if not (uname.isdigit() and (not gname or gname.isdigit())):
            annotations[USER_ANNOTATION] = user_text
    if S.env_get(env, "HOME") is None and user["uid"] == 0 and USER_ANNOTATION not in annotations:
        env.append("HOME=/root")

    caps = capabilities.resolve(_opt(opts, "cap_add") or (), _opt(opts, "cap_drop") or (),
                                bool(_opt(opts, "privileged", False)))
    process = {
        "terminal": tty,
        "user": user,
        "args": process_args(config, opts),
        "env": env,
        "cwd": cwd,
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }
    if tty:
        process["consoleSize"] = {"height": 24, "width": 80}

    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]
    for v in _opt(opts, "volumes") or []:
        mounts.append(S.parse_volume(v).to_mount() if isinstance(v, str) else v.to_mount())

    network = _opt(opts, "network", "private") or "private"
    if network.startswith("container:") and not network.partition(":")[2]:
        raise ImagetoolError("--network container: needs a container's name or id")
    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]
    if network != "host":
        # a bridge or user network, container:NAME: imagetool.network.attach names the namespace's path here
        namespaces.insert(1, {"type": "network"})
    if network == "private":
        annotations["org.imagetool.network"] = "loopback"
    if _opt(opts, "publish_all", False) and getattr(config, "exposed_ports", None):
        annotations[EXPOSED_ANNOTATION] = ",".join(config.exposed_ports)   # -P: network.attach publishes them

    resources: dict = {"devices": S.device_rules()}
    memory = _opt(opts, "memory")
    swap = _opt(opts, "memory_swap")
    if memory:
        limit = S.parse_memory(memory)
        mem = {"limit": limit}
        if swap is not None and str(swap).strip() == "-1":
            mem["swap"] = -1
        elif swap:
            total = S.parse_memory(swap, "memory-swap")
            if total < limit:
                raise ImagetoolError("--memory-swap must be at least --memory")
            mem["swap"] = total
        else:
            mem["swap"] = 2 * limit  # docker's default: as much swap as memory
        resources["memory"] = mem
    elif swap:
        raise ImagetoolError("--memory-swap needs --memory")
    cpus = _opt(opts, "cpus")
    if cpus is not None:
        if cpus <= 0:
            raise ImagetoolError(f"invalid --cpus {cpus}: must be positive")
        resources["cpu"] = {"quota": max(1000, int(round(cpus * 100000))), "period": 100000}
    pids = _opt(opts, "pids_limit")
    if pids is None:
        pids = DEFAULT_PIDS_LIMIT
    if pids > 0:
        resources["pids"] = {"limit": int(pids)}

    spec = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": bool(_opt(opts, "read_only", False))},
        "hostname": host,
        "mounts": mounts,
        "linux": {
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": list(S.MASKED_PATHS),
            "readonlyPaths": list(S.READONLY_PATHS),
        },
    }
    if annotations:
        spec["annotations"] = annotations
    apply_security(spec, opts, rootfs_dir)
    return spec


def _refuse_nul(config) -> None:
    """A NUL byte can pass neither execve nor a path: the image config's Entrypoint, Cmd, Env,
    WorkingDir and User are refused here, once, with one clear line (exit 125 under run)."""
    for field, attr in (("Entrypoint", "entrypoint"), ("Cmd", "cmd"), ("Env", "env"),
                        ("WorkingDir", "working_dir"), ("User", "user")):
        value = getattr(config, attr, None)
        _refuse_nul_in(f"the image config's {field}", [value] if isinstance(value, str) else value or ())


def _refuse_nul_in(what: str, values) -> None:
    for v in values:
        if "\x00" in str(v):
            raise ImagetoolError(f"{what} holds a NUL byte: {str(v)!r}",
                                 hint="a NUL byte cannot be part of a command, an environment variable or a path")


def apply_security(spec: dict, opts, rootfs_dir: Path | str | None = None) -> None:
    """docker's security options onto a spec built with the defaults (in place).

    --privileged: every device of the host in linux.devices and allowed, no masked or read-only
    paths, a writable /sys and /sys/fs/cgroup, no seccomp. Otherwise linux.seccomp is the default profile (or
    `--security-opt seccomp=FILE`, none with `seccomp=unconfined`) filtered for the container's
    capabilities. Then --device, --tmpfs, --shm-size, --ulimit, --sysctl, --group-add and
    `--security-opt no-new-privileges[=false]` (imagetool's default is true).
    """
    privileged = bool(_opt(opts, "privileged", False))
    process, linux = spec["process"], spec["linux"]
    seccomp_opt, nnp = S.parse_security_opts(_opt(opts, "security_opt"))
    if nnp is not None:
        process["noNewPrivileges"] = nnp

    entries: list[dict] = []
    rules = linux["resources"]["devices"]
    if privileged:
        entries = devices.host_devices()
        rules[:] = [{"allow": True, "access": "rwm"}]
        linux["maskedPaths"], linux["readonlyPaths"] = [], []
        for m in spec["mounts"]:
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"]
    for text in _opt(opts, "devices") or []:
        entry, rule = devices.parse_device(text)
        entries = [e for e in entries if e["path"] != entry["path"]] + [entry]
        if not privileged:
            rules.append(rule)
    if entries:
        linux["devices"] = entries

    for text in _opt(opts, "tmpfs") or []:
        mount = S.parse_tmpfs(text)
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != mount["destination"]] + [mount]
    shm = _opt(opts, "shm_size")
    if shm:
        size = S.parse_memory(shm, "shm size")
        for m in spec["mounts"]:
            if m["destination"] == "/dev/shm":
                m["options"] = [o for o in m["options"] if not o.startswith("size=")] + [f"size={size}"]

    for text in _opt(opts, "ulimits") or []:
        limit = S.parse_ulimit(text)
        process["rlimits"] = [r for r in process["rlimits"] if r["type"] != limit["type"]] + [limit]

    host_network = not any(ns["type"] == "network" for ns in linux["namespaces"])
    sysctls = dict(S.parse_sysctl(t, host_network) for t in _opt(opts, "sysctls") or [])
    if sysctls:
        linux["sysctl"] = sysctls

    _group_add(spec, _opt(opts, "group_add") or [], rootfs_dir)

    if not privileged and seccomp_opt != "unconfined":
        profile = seccomp.read_profile(seccomp_opt) if seccomp_opt else seccomp.default_profile()
        linux["seccomp"] = seccomp.profile_to_oci(profile, process["capabilities"]["bounding"])


def _group_add(spec: dict, groups: list[str], rootfs_dir) -> None:
    """--group-add: numeric gids, and names when the rootfs is given (the bundle writer), join
    process.user.additionalGids. A name without the rootfs is refused rather than dropped: the
    run path builds the spec before the rootfs exists and its init does not resolve group names."""
    user = spec["process"]["user"]
    gids = list(user.get("additionalGids", []))
    for g in groups:
        g = str(g).strip()
        if g.isdigit():
            gid = lookup_user(None, f"0:{g}").gid  # the one lookup checks the range
        elif g and ":" not in g and "," not in g and rootfs_dir is not None:
            gid = lookup_user(rootfs_dir, f"0:{g}").gid
        elif g and ":" not in g and "," not in g:
            raise ImagetoolError(f"--group-add {g}: group names are not resolved in the container yet",
                                 hint="give the numeric gid (e.g. --group-add 29)")
        else:
            raise ImagetoolError(f"invalid --group-add {g!r}: give a group name or a numeric gid")
        if gid not in gids:
            gids.append(gid)
    if gids:
        user["additionalGids"] = gids
