"""Every command's options and arguments, declared once: the typer app (cli.py) and the fast parser (fastcli.py) both read this table.

A `Param` with `flags` is an option, one without is a positional argument. Each `dest` is the
keyword the command's body (commands.py) receives; for `run` the dests are RunOptions' field
names, so `RunOptions(**values)` needs no mapping. This module imports only the standard library:
the fast path loads it on every start.
"""

from __future__ import annotations

REQUIRED = ...  # the default of a required argument


class Param:
    """One option (`flags` given) or positional argument (`flags` empty) of a command.

    type: str, int, float or bool (an option without a value, True when given).
    multiple: an option that may repeat (a list of its values in order); an argument that takes
    every remaining positional (a list, at least one when `default` is REQUIRED).
    default: the value when absent; REQUIRED for an argument that must be given.
    minimum: the smallest accepted int.

    A plain class, not a dataclass: this table loads on every start, and making the two classes
    with @dataclass costs more than parsing argv (treat the fields as read-only)."""

    __slots__ = ("dest", "flags", "help", "type", "multiple", "default", "metavar", "minimum", "hidden")

    def __init__(self, dest: str, flags: tuple[str, ...], help: str, type: type = str, multiple: bool = False,
                 default: object = None, metavar: str | None = None, minimum: int | None = None,
                 hidden: bool = False):
        self.dest, self.flags, self.help, self.type, self.multiple = dest, flags, help, type, multiple
        self.default, self.metavar, self.minimum, self.hidden = default, metavar, minimum, hidden

    def __repr__(self) -> str:
        return f"Param({self.dest!r}, {self.flags!r})"

    @property
    def is_argument(self) -> bool:
        return not self.flags

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Command:
    """A command: its name, one-line help and parameters. `interspersed=False`: options end at the
    first positional (run: what follows IMAGE is the container's command, options included)."""

    __slots__ = ("name", "help", "params", "interspersed")

    def __init__(self, name: str, help: str, params: tuple[Param, ...], interspersed: bool = True):
        self.name, self.help, self.params, self.interspersed = name, help, params, interspersed

    def __repr__(self) -> str:
        return f"Command({self.name!r})"


def option(flags: str, dest: str, help: str, type: type = str, **kw) -> Param:
    """An option; `flags` is a space-separated list ("-e --env")."""
    return Param(dest, tuple(flags.split()), help, type, default=False if type is bool else kw.pop("default", None), **kw)


def argument(dest: str, metavar: str, help: str, default=REQUIRED, multiple: bool = False) -> Param:
    return Param(dest, (), help, str, multiple=multiple, default=default, metavar=metavar)


FORMAT_TABLE_JSON = option("--format", "fmt", "Output format: table or json.", default="table", metavar="FORMAT")
TO_FILE = option("-o --output", "output", "Write to FILE (default: stdout, when it is not a terminal).",
                 metavar="FILE")
INSECURE = option("--insecure", "insecure", "Allow plain HTTP and unverified TLS for this registry.", bool)

GLOBAL = Command("imagetool", "A daemonless container toolchain: pull, store, unpack, run, load and save OCI images.", (
    option("--store", "store", "Store directory (default: $IMAGETOOL_STORE, else /var/lib/imagetool for root, "
           "else $XDG_DATA_HOME/imagetool).", metavar="DIR"),
    option("--debug", "debug", "Show tracebacks.", bool),
), interspersed=False)
"""The options before the command word (`--version` and `--help` are the typer app's own)."""

RUN = Command("run", "Run a command in a new container (pulls or loads the image when missing).", (
    argument("image", "IMAGE", "Image reference, or an archive / OCI layout path to load."),
    argument("command", "[COMMAND [ARG...]]", "Command and arguments (default: the image's entrypoint and cmd).",
             default=None, multiple=True),
    option("--rm", "rm", "Remove the container when it exits.", bool),
    option("--name", "name", "Name the container.", metavar="NAME"),
    option("-e --env", "env", "Set an environment variable (NAME=VALUE, or NAME to pass the host's).",
           multiple=True, metavar="NAME[=VALUE]"),
    option("--env-file", "env_files", "Read environment variables from FILE (one NAME=VALUE a line).",
           multiple=True, metavar="FILE"),
    option("-w --workdir", "workdir", "Working directory inside the container.", metavar="DIR"),
    option("-u --user", "user", "User to run as: name|uid[:group|gid].", metavar="USER"),
    option("--entrypoint", "entrypoint", "Replace the image's entrypoint.", metavar="CMD"),
    option("-h --hostname", "hostname", "The container's hostname.", metavar="NAME"),
    option("-v --volume", "volumes", "Bind mount HOST:CONTAINER[:ro].", multiple=True, metavar="HOST:CONTAINER[:ro]"),
    option("--read-only", "read_only", "Mount the container's root filesystem read-only.", bool),
    option("-m --memory", "memory", "Memory limit (bytes, or with k, m, g).", metavar="BYTES"),
    option("--memory-swap", "memory_swap", "Memory plus swap limit (-1: unlimited swap).", metavar="BYTES"),
    option("--cpus", "cpus", "CPU limit in CPUs (1.5 = one and a half).", float, metavar="N"),
    option("--pids-limit", "pids_limit", "Maximum number of processes (-1: unlimited).", int, metavar="N"),
    option("--network", "network", "bridge (the default network `imagetool`) | slirp4netns (user-mode networking) | "
           "private (loopback only) | none | host | container:NAME | a network made with `network create`. "
           "Default: bridge as root when the CNI plugins are installed, slirp4netns rootless; private, with a "
           "notice, where neither can run.",
           metavar="NETWORK"),
    option("-p --publish", "publish", "Publish a container's port on the host: [IP:][HOSTPORT:]CONTAINERPORT[/tcp|/udp] "
           "(a free host port when HOSTPORT is left out).", multiple=True, metavar="PORT"),
    option("-P --publish-all", "publish_all", "Publish every port the image EXPOSEs on a free host port.", bool),
    option("--ip", "ip", "The container's IPv4 address on its bridge or user network.", metavar="IP"),
    option("--network-alias", "network_aliases", "Another name of the container in its /etc/hosts.",
           multiple=True, metavar="NAME"),
    option("--dns", "dns", "A nameserver for the container's /etc/resolv.conf (replaces the host's).",
           multiple=True, metavar="IP"),
    option("--dns-search", "dns_search", "A search domain for /etc/resolv.conf ('.' for none).", multiple=True,
           metavar="DOMAIN"),
    option("--add-host", "add_hosts", "Add NAME:IP to the container's /etc/hosts.", multiple=True,
           metavar="NAME:IP"),
    option("-i --interactive", "interactive", "Keep stdin open and connected to the container.", bool),
    option("-t --tty", "tty", "Give the container a terminal.", bool),
    option("--runtime", "runtime", "Hand the spec to runc or crun instead of the built-in runtime.",
           metavar="NAME"),
    option("--platform", "platform", "Platform to pull when the image is missing: os/arch[/variant].",
           metavar="PLATFORM"),
    option("--rootfs", "rootfs_mode", "Root filesystem: auto | overlay | copy.", default="auto", hidden=True,
           metavar="MODE"),
    option("--explain", "explain", "Print each step of the runtime on stderr as it happens, with its shell "
           "equivalent.", bool),
    option("--script", "script", "Print a POSIX sh script that builds and runs the same container; run nothing.",
           bool),
    option("--cap-add", "cap_add", "Add a capability (CHOWN or CAP_CHOWN; ALL).", multiple=True, metavar="CAP"),
    option("--cap-drop", "cap_drop", "Drop a capability (CHOWN or CAP_CHOWN; ALL).", multiple=True, metavar="CAP"),
    option("--privileged", "privileged", "All capabilities, host devices, no seccomp, no masked paths.", bool),
    option("--security-opt", "security_opt", "seccomp=FILE | seccomp=unconfined | no-new-privileges.",
           multiple=True, metavar="OPT"),
    option("--device", "devices", "Give the container a host device: HOST[:CONTAINER][:rwm].", multiple=True,
           metavar="DEVICE"),
    option("--tmpfs", "tmpfs", "Mount a tmpfs: DST[:OPTIONS].", multiple=True, metavar="DST[:OPTIONS]"),
    option("--shm-size", "shm_size", "Size of /dev/shm (bytes, or with k, m, g).", metavar="BYTES"),
    option("--ulimit", "ulimits", "Resource limit: NAME=SOFT[:HARD].", multiple=True, metavar="NAME=SOFT[:HARD]"),
    option("--sysctl", "sysctls", "Namespaced kernel parameter: KEY=VALUE.", multiple=True, metavar="KEY=VALUE"),
    option("--group-add", "group_add", "Add a supplementary group (name or gid).", multiple=True, metavar="GROUP"),
    option("-d --detach", "detach", "Run in the background under its own monitor; print the container's id.", bool),
    option("--stop-signal", "stop_signal", "Signal `stop` sends first (default: the image's, else SIGTERM).",
           metavar="SIGNAL"),
    option("--stop-timeout", "stop_timeout", "Seconds `stop` waits before SIGKILL (default 10).", int, minimum=0,
           metavar="N"),
    option("--restart", "restart", "With -d, run it again when it exits: no | on-failure[:N] | always | "
           "unless-stopped (while its monitor lives; nothing restarts containers after a reboot).", default="no",
           metavar="POLICY"),
    option("--init", "init", "Run tini (the host's tini-static) as PID 1: it forwards signals and reaps zombies.",
           bool),
    option("--log-opt", "log_opts", "With -d, rotate the json-file log: max-size=SIZE, max-file=N.", multiple=True,
           metavar="KEY=VALUE"),
    option("--health-cmd", "health_cmd", "Healthcheck command, run by /bin/sh -c in the container (with -d).",
           metavar="COMMAND"),
    option("--health-interval", "health_interval", "Time between healthchecks (default 30s).", metavar="DURATION"),
    option("--health-timeout", "health_timeout", "A healthcheck running longer fails (default 30s).",
           metavar="DURATION"),
    option("--health-retries", "health_retries", "Failures in a row that make it unhealthy (default 3).", int,
           minimum=0, metavar="N"),
    option("--health-start-period", "health_start_period", "Failures in this time after the start do not "
           "count (default 0s).", metavar="DURATION"),
    option("--no-healthcheck", "no_healthcheck", "Disable the image's HEALTHCHECK.", bool),
), interspersed=False)

CONTAINERS = argument("containers", "CONTAINER...", "Container ids or names.", multiple=True)

COMMANDS: tuple[Command, ...] = (
    Command("images", "List images in the store.", (FORMAT_TABLE_JSON,)),
    Command("info", "Show what this machine gives you: user namespace ids, overlay or copy, slirp4netns, cgroups, "
            "the store.", (FORMAT_TABLE_JSON,)),
    Command("inspect", "Show a container as docker inspect does, or an image's manifest, config and layers.", (
        argument("ref", "REF", "Container id or name, or image reference or digest."),)),
    Command("tag", "Give an image another name.", (
        argument("src", "SRC", "Image to name."), argument("dst", "DST", "New name."))),
    Command("rmi", "Remove image names (blobs go at the next `prune`).", (
        argument("refs", "REF...", "Image names to remove.", multiple=True),)),
    Command("prune", "Remove exited containers and unreferenced blobs, snapshots and stale downloads.", ()),
    Command("pull", "Pull an image from a registry into the store.", (
        argument("ref", "REF", "Image reference."),
        option("--platform", "platform", "Platform to pick from a multi-platform image: os/arch[/variant].",
               metavar="PLATFORM"),
        option("-q --quiet", "quiet", "Print only the resolved digest.", bool),
        option("--max-concurrent-downloads", "max_concurrent", "Layers downloaded at once.", int, default=3,
               minimum=1, metavar="N"),
        option("--no-unpack", "no_unpack", "Only store the blobs: do not prepare the layer snapshots `run` uses.",
               bool),
        INSECURE)),
    Command("push", "Push an image from the store to a registry (its own name's, or DEST).", (
        argument("ref", "IMAGE", "Image in the store: name, digest or ID prefix."),
        argument("dest", "[DEST]", "Where to push: [docker://]REGISTRY/REPO[:TAG] (default: IMAGE's name).",
                 default=None),
        option("-a --all-tags", "all_tags", "Push every tag of IMAGE's repository (DEST then names a repository).",
               bool),
        option("--format", "format", "Refuse to push unless the image is in this format: oci or docker.",
               metavar="FORMAT"),
        option("-q --quiet", "quiet", "Print only the pushed digests.", bool),
        INSECURE)),
    Command("copy", "Copy an image between registries, OCI layouts, archives and the store, digests unchanged.", (
        argument("src", "SRC", "docker://REF | oci:DIR[:REF] | oci-archive:FILE[:REF] | docker-archive:FILE[:REF] "
                 "| store:REF"),
        argument("dest", "DEST", "Where to copy to, in the same forms as SRC."),
        option("-a --all", "all_platforms", "Copy every platform of a multi-platform image (the index too).", bool),
        option("--platform", "platform", "Platform to copy from a multi-platform image (default: this host's).",
               metavar="PLATFORM"),
        option("--format", "format", "Write the manifests in this format: oci or docker (blobs unchanged; "
               "converted manifests get new digests).", metavar="FORMAT"),
        option("-q --quiet", "quiet", "Print only the copied digest.", bool),
        INSECURE)),
    Command("commit", "Make a new image from a stopped container's changes (one layer on its image).", (
        argument("container", "CONTAINER", "Container id, name or id prefix (not running)."),
        argument("image", "[IMAGE]", "Name of the new image (default: untagged).", default=None),
        option("-c --change", "changes", "Apply an instruction: CMD, ENTRYPOINT, ENV, WORKDIR, EXPOSE, LABEL or USER "
               "(Dockerfile syntax).", multiple=True, metavar="INSTRUCTION"),
        option("-m --message", "message", "Comment recorded in the image's history.", metavar="TEXT"),
        option("-a --author", "author", "Author recorded in the image's config.", metavar="NAME"))),
    Command("history", "Show an image's history, newest first, with each layer's size.", (
        argument("ref", "IMAGE", "Image reference or digest."),
        option("--no-trunc", "no_trunc", "Do not shorten CREATED BY.", bool),
        FORMAT_TABLE_JSON)),
    Command("login", "Store credentials for a registry (checked against it first).", (
        argument("registry", "[REGISTRY]", "Registry host (default: docker.io).", default="docker.io"),
        option("-u --username", "username", "User name (asked when absent).", metavar="NAME"),
        option("-p --password", "password", "Password (asked when absent; prefer --password-stdin).",
               metavar="PASSWORD"),
        option("--password-stdin", "password_stdin", "Read the password from stdin.", bool),
        INSECURE)),
    Command("logout", "Remove stored credentials for a registry.", (
        argument("registry", "[REGISTRY]", "Registry host (default: docker.io).", default="docker.io"),)),
    Command("unpack", "Unpack an image's flattened root filesystem (or an OCI bundle) into DIR.", (
        argument("ref", "REF", "Image reference."),
        argument("dest", "DIR", "Target directory (created; must be empty if it exists)."),
        option("--bundle", "bundle", "Write DIR/rootfs and DIR/config.json.", bool))),
    RUN,
    Command("ps", "List containers.", (
        option("-a --all", "all_", "Show exited containers too.", bool), FORMAT_TABLE_JSON)),
    Command("rm", "Remove containers.", (
        CONTAINERS,
        option("-f --force", "force", "Kill a running container first.", bool))),
    Command("logs", "Show a container's output (run -d keeps it in docker's json-file format).", (
        argument("container", "CONTAINER", "Container id or name."),
        option("-f --follow", "follow", "Follow the output until the container exits.", bool),
        option("-n --tail", "tail", "Show only the last N lines.", int, minimum=0, metavar="N"),
        option("-t --timestamps", "timestamps", "Show each line's time.", bool),
        option("--since", "since", "Only the lines written since T: an RFC 3339 or Unix time, or a duration "
               "before now (10s, 1m30s).", metavar="T"))),
    Command("stop", "Stop running containers: their stop signal, then SIGKILL after a timeout.", (
        CONTAINERS,
        option("-t --time", "time", "Seconds to wait before SIGKILL (default 10).", int, minimum=0, metavar="N"))),
    Command("kill", "Send a signal to running containers' PID 1.", (
        CONTAINERS,
        option("-s --signal", "signal", "Signal to send (default SIGKILL).", default="SIGKILL", metavar="SIGNAL"))),
    Command("wait", "Wait until containers exit; print each one's exit code.", (CONTAINERS,)),
    Command("attach", "Attach this terminal's stdin, stdout and stderr to a running detached container.", (
        argument("container", "CONTAINER", "Container id or name."),
        option("--no-stdin", "no_stdin", "Do not attach stdin.", bool),
        option("--sig-proxy", "sig_proxy", "Forward received signals to the container (without -t): true or "
               "false.", default="true", metavar="BOOL"),
        option("--detach-keys", "detach_keys", "Keys that detach, leaving the container running (default "
               "ctrl-p,ctrl-q).", metavar="KEYS"))),
    Command("exec", "Run a command in a running container (its namespaces, cgroup, capabilities, seccomp).", (
        argument("container", "CONTAINER", "Container id or name."),
        argument("command", "COMMAND [ARG...]", "Command and arguments.", multiple=True),
        option("-i --interactive", "interactive", "Keep stdin open and connected to the command.", bool),
        option("-t --tty", "tty", "A terminal for the command: a pty of the container's own devpts.", bool),
        option("-d --detach", "detach", "Run the command in the background (its output is discarded).", bool),
        option("-e --env", "env", "Set an environment variable (NAME=VALUE, or NAME to pass the host's).",
               multiple=True, metavar="NAME[=VALUE]"),
        option("-u --user", "user", "User to run as: name|uid[:group|gid].", metavar="USER"),
        option("-w --workdir", "workdir", "Working directory inside the container.", metavar="DIR")),
        interspersed=False),
    Command("start", "Start exited containers again (on their own files) under a new monitor.", (
        CONTAINERS,
        option("-a --attach", "attach", "Attach its output (from the start) until it exits; its exit code.", bool),
        option("-i --interactive", "interactive", "Attach its stdin too (implies -a; a container run with -i).", bool),
        option("--detach-keys", "detach_keys", "With -a: keys that detach, leaving it running (default "
               "ctrl-p,ctrl-q).", metavar="KEYS"))),
    Command("restart", "Stop containers (as `stop`) and start them again.", (
        CONTAINERS,
        option("-t --time", "time", "Seconds to wait before SIGKILL (default 10).", int, minimum=0, metavar="N"))),
    Command("port", "List a container's published ports (CONTAINERPORT/PROTO -> HOSTIP:HOSTPORT).", (
        argument("container", "CONTAINER", "Container id or name."),)),
    Command("network", "Manage networks: create [--subnet CIDR] [--gateway IP] NAME | ls | inspect NAME... | rm NAME...", (
        argument("action", "ACTION", "create, ls, inspect or rm."),
        argument("names", "[NAME...]", "Network names.", default=None, multiple=True),
        option("--subnet", "subnet", "create: the network's IPv4 subnet (default: a free /24 of 10.88.0.0/14).",
               metavar="CIDR"),
        option("--gateway", "gateway", "create: the bridge's address (default: the subnet's first).", metavar="IP"),
        FORMAT_TABLE_JSON)),
    Command("load", "Load images from a docker-archive, oci-archive or OCI layout.", (
        option("-i --input", "input_", "Archive or OCI layout directory ('-' = stdin).", metavar="FILE"),)),
    Command("save", "Save images to a tar archive (stdout when -o is absent and stdout is not a terminal).", (
        argument("refs", "REF...", "Images to save.", multiple=True),
        TO_FILE,
        option("--format", "fmt", "Archive format: docker or oci.", default="docker", metavar="FORMAT"))),
    Command("import", "Create a one-layer image from a root filesystem tarball or directory.", (
        argument("source", "FILE|DIR|-", "Tarball, directory or '-' for a tarball on stdin."),
        argument("name", "NAME[:TAG]", "Name of the new image."))),
    Command("export", "Write a container's or image's flattened filesystem as a tarball.", (
        argument("target", "CONTAINER|IMAGE", "Container id or name, or image reference."),
        TO_FILE)),
)

BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}


def defaults(command: Command) -> dict:
    """Each parameter's value when absent (a fresh list for `multiple`)."""
    return {p.dest: ([] if p.multiple and p.default is None else p.default) for p in command.params}
