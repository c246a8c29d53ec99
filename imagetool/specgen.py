"""Build the OCI runtime spec (config.json, ociVersion 1.0.2) from an image config and run options.

The spec is the one description of a container: imagetool's own runtime executes it, and the
same dict written as `config.json` runs unchanged under `runc run` / `crun run`.
"""

from __future__ import annotations

from pathlib import Path

from imagetool.errors import ImagetoolError
from imagetool.runtime import spec as S
from imagetool.runtime.capabilities import DEFAULT_CAPS
from imagetool.users import lookup as lookup_user

OCI_VERSION = "1.0.2"
USER_ANNOTATION = "org.imagetool.user"  # the user as given, when it names a user by name


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
    tty = bool(_opt(opts, "tty", False))
    env = list(getattr(config, "env", None) or [])
    extra: list[str] = []
    for path in _opt(opts, "env_files") or []:
        extra += S.read_env_file(path)
    extra += list(_opt(opts, "env") or [])
    env = S.merge_env(env, extra)
    if S.env_get(env, "PATH") is None:
        env.insert(0, f"PATH={S.DEFAULT_PATH}")
    host = _opt(opts, "hostname") or hostname or "imagetool"
    if S.env_get(env, "HOSTNAME") is None:
        env.append(f"HOSTNAME={host}")
    if tty and S.env_get(env, "TERM") is None:
        env.append("TERM=xterm")

    cwd = _opt(opts, "workdir") or getattr(config, "working_dir", None) or "/"
    if not cwd.startswith("/"):
        raise ImagetoolError(f"the working directory {cwd!r} is invalid: it must be an absolute path")

    user_text = _opt(opts, "user") or getattr(config, "user", None) or ""
    annotations: dict[str, str] = {}
    user = {"uid": 0, "gid": 0}
    if user_text:
        uname = user_text.partition(":")[0]
        gname = user_text.partition(":")[2]
        if rootfs_dir is not None or (uname.isdigit() and (not gname or gname.isdigit())):
            u = lookup_user(rootfs_dir, user_text)
            user = {"uid": u.uid, "gid": u.gid}
            if u.additional_gids:
                user["additionalGids"] = list(u.additional_gids)
            if u.home and S.env_get(env, "HOME") is None:
                env.append(f"HOME={u.home}")
        if not (uname.isdigit() and (not gname or gname.isdigit())):
            annotations[USER_ANNOTATION] = user_text
    if S.env_get(env, "HOME") is None and user["uid"] == 0 and USER_ANNOTATION not in annotations:
        env.append("HOME=/root")

    caps = list(DEFAULT_CAPS)
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
    ]
    for v in _opt(opts, "volumes") or []:
        mounts.append(S.parse_volume(v).to_mount() if isinstance(v, str) else v.to_mount())

    network = _opt(opts, "network", "private") or "private"
    if network not in ("private", "none", "host", "bridge", "default"):
        raise ImagetoolError(f"unsupported network {network!r}", hint="use none or host (default: private loopback)")
    namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]
    if network != "host":
        namespaces.insert(1, {"type": "network"})
    if network != "none" and network != "host":
        annotations["org.imagetool.network"] = "loopback"

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
    if pids is not None and pids > 0:
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
    return spec
