"""What is measured: one small spec per operation (imagetool's command, the peers' commands, setup).

Every destination (stores, layouts, podman roots, bundles, runtime state) lives under the tmpfs
work dir `ctx.work`. podman runs as root with its own --root/--runroot/--tmpdir there (the host's
podman storage is never touched), `--cgroup-manager cgroupfs --events-backend file`, and
`--tls-verify=false` for the loopback registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import rmtree
from benchmarks.imagegen import REF, BenchImage
from benchmarks.measure import Contender, Operation, error_line


@dataclass
class Context:
    work: Path  # the tmpfs
    registry: str  # "127.0.0.1:PORT"
    images: dict  # name -> BenchImage, layouts copied onto the tmpfs
    imagetool: list  # argv prefix of the console script
    python: str  # the interpreter behind it
    tools: dict  # tool -> path or None
    quick: bool = False
    editable: list | None = None  # the checkout's editable install (.venv), measured beside the headline one
    fallbacks: list = field(default_factory=list)  # preparations that could not use imagetool
    _prepared: dict = field(default_factory=dict)

    # ------------------------------------------------------------ names and paths

    def ref(self, image: str) -> str:
        return f"{self.registry}/bench/{image}:latest"

    def d(self, *parts: str) -> Path:
        return self.work.joinpath(*parts)

    def it(self, store: Path, *args: str) -> list:
        return [*self.imagetool, "--store", str(store), *args]

    def podman(self, name: str, *args: str) -> list:
        base = self.d("podman", name)
        return [self.tools["podman"] or "podman", "--root", str(base / "root"), "--runroot", str(base / "run"),
                "--tmpdir", str(base / "tmp"), "--storage-driver", "overlay",
                "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]

    def missing(self, tool: str) -> str | None:
        return None if self.tools.get(tool) else f"{tool} not installed"

    # ------------------------------------------------------------ one-off preparations (memoised)

    def once(self, key: str, fn) -> None:
        """Run fn() once per key; a failure is remembered and re-raised for every later user."""
        if key not in self._prepared:
            try:
                fn()
                self._prepared[key] = None
            except Exception as e:  # noqa: BLE001
                self._prepared[key] = e
        if self._prepared[key] is not None:
            raise self._prepared[key]

    def check(self, argv: list, what: str) -> None:
        r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"{what}: exit {r.returncode}: {error_line(r.stderr or r.stdout)}")

    def imagetool_store_with(self, image: str) -> Path:
        """A store (shared by the run/unpack/save ops) holding `image`, pulled once by imagetool."""
        store = self.d("it-store")

        def fill():
            try:
                self.check(self.it(store, "pull", "-q", self.ref(image)), f"imagetool pull {image}")
            except RuntimeError as e:
                # the store is an OCI layout: let skopeo fill it so unpack/run/save can be measured
                # while `imagetool pull` is not usable; the report says so
                store.mkdir(parents=True, exist_ok=True)
                self.check(["skopeo", "copy", "--quiet", f"oci:{self.images[image].layout}:{REF}",
                            f"oci:{store}:{self.ref(image)}"], f"skopeo copy into imagetool's store ({e})")
                self.fallbacks.append(f"{image}: imagetool's store was filled by skopeo ({e})")

        self.once(f"it-pull-{image}", fill)
        return store

    def podman_with(self, image: str) -> str:
        """The shared podman root ("shared") holding `image`; returns the podman root name."""
        self.once(f"podman-pull-{image}", lambda: self.check(
            self.podman("shared", "pull", "-q", "--tls-verify=false", self.ref(image)), f"podman pull {image}"))
        return "shared"

    def bundle(self, image: str) -> Path:
        """An OCI runtime bundle of `image` (umoci unpack) whose process is `/bin/busybox true`."""
        b = self.d("bundles", image)

        def make():
            rmtree(b)
            b.parent.mkdir(parents=True, exist_ok=True)
            self.check(["umoci", "unpack", "--image", f"{self.images[image].layout}:{REF}", str(b)],
                       f"umoci unpack {image}")
            cfg = json.loads((b / "config.json").read_text())
            cfg["process"]["args"] = ["/bin/busybox", "true"]
            cfg["process"]["terminal"] = False
            cfg["root"]["readonly"] = False
            (b / "config.json").write_text(json.dumps(cfg))

        self.once(f"bundle-{image}", make)
        return b

    def archive(self, image: str, transport: str = "docker-archive") -> Path:
        """A docker-archive or oci-archive of `image` written by skopeo (the input of the load operations)."""
        out = self.d("archives", f"{image}-{transport}.tar")

        def make():
            out.parent.mkdir(parents=True, exist_ok=True)
            out.unlink(missing_ok=True)
            self.check(["skopeo", "copy", "--quiet", f"oci:{self.images[image].layout}:{REF}",
                        f"{transport}:{out}:bench/{image}:latest"], f"skopeo copy to {transport} {image}")

        self.once(f"archive-{image}-{transport}", make)
        return out


def _fresh(path: Path):
    """A per-run hook that removes `path` (unmounting what a tool left there) and makes its parent."""

    def hook(i: int) -> None:
        rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)

    return hook


# ---------------------------------------------------------------- operations


def pull_op(ctx: Context, image: str) -> Operation:
    ref = ctx.ref(image)
    store, dest = ctx.d("pull", "it-store"), ctx.d("pull", "skopeo-dest")
    return Operation(
        f"pull {image}", group="pull", image=image,
        imagetool=Contender("imagetool pull", lambda i: ctx.it(store, "pull", "-q", ref),
                            setup=_fresh(store), teardown=_fresh(store)),
        peers=[
            # pull prepares the snapshots (as podman pull does); skopeo copy stores blobs only
            Contender("imagetool pull --no-unpack (blobs only)", lambda i: ctx.it(store, "pull", "-q", "--no-unpack", ref),
                      setup=_fresh(store), teardown=_fresh(store)),
            Contender("skopeo copy docker:// oci:",
                      lambda i: ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                 f"docker://{ref}", f"oci:{dest}:latest"],
                      setup=_fresh(dest), teardown=_fresh(dest), missing=ctx.missing("skopeo")),
            Contender("podman pull",
                      lambda i: ctx.podman("pull", "pull", "-q", "--tls-verify=false", ref),
                      setup=_fresh(ctx.d("podman", "pull")), teardown=_fresh(ctx.d("podman", "pull")),
                      missing=ctx.missing("podman")),
        ],
        note="fresh destination each run; imagetool pull and podman pull also extract the layers (snapshots)")


def repull_op(ctx: Context, image: str) -> Operation:
    ref = ctx.ref(image)
    store, dest = ctx.d("repull", "it-store"), ctx.d("repull", "skopeo-dest")
    return Operation(
        f"re-pull {image} (all present)", group="re-pull", image=image,
        imagetool=Contender("imagetool pull", lambda i: ctx.it(store, "pull", "-q", ref),
                            prepare=lambda: ctx.check(ctx.it(store, "pull", "-q", ref), "first pull")),
        peers=[
            Contender("skopeo copy docker:// oci:",
                      lambda i: ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                 f"docker://{ref}", f"oci:{dest}:latest"],
                      prepare=lambda: (dest.parent.mkdir(parents=True, exist_ok=True),
                                       ctx.check(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                                  f"docker://{ref}", f"oci:{dest}:latest"], "first copy")),
                      missing=ctx.missing("skopeo")),
            Contender("podman pull",
                      lambda i: ctx.podman("repull", "pull", "-q", "--tls-verify=false", ref),
                      prepare=lambda: ctx.check(ctx.podman("repull", "pull", "-q", "--tls-verify=false", ref),
                                                "first podman pull"),
                      missing=ctx.missing("podman")),
        ],
        note="destination already holds every blob")


UNPACK_SERVICE = ("import sys; from store import Store; from imagetool.bundle import unpack_image; "
                  "unpack_image(Store.open(sys.argv[1]), sys.argv[2], sys.argv[3])")


def unpack_op(ctx: Context, image: str) -> Operation:
    img: BenchImage = ctx.images[image]
    ref = ctx.ref(image)
    it_dest, umoci_dest, tar_dest = ctx.d("unpack", "it"), ctx.d("unpack", "umoci"), ctx.d("unpack", "tar")
    store = ctx.d("it-store")
    zstd = image.endswith("zstd")
    flag = "--zstd -xf" if zstd else "-xzf"
    blobs = " ".join(str(b) for b in img.layer_blobs())
    tar_script = f'mkdir -p "$1" && for b in {blobs}; do tar {flag} "$b" -C "$1" || exit 1; done'

    def it_setup(i: int) -> None:
        ctx.imagetool_store_with(image)
        _fresh(it_dest)(i)
        # cold every run: no extracted layer kept from the previous run (umoci and tar start cold too)
        for p in (store / "snapshots").glob("*"):
            rmtree(p)

    svc_dest = ctx.d("unpack", "it-service")

    def it_setup_svc(i: int) -> None:
        ctx.imagetool_store_with(image)
        _fresh(svc_dest)(i)

    return Operation(
        f"unpack {image}", group="unpack", image=image,
        imagetool=Contender("imagetool unpack", lambda i: ctx.it(store, "unpack", ref, str(it_dest)),
                            setup=it_setup, teardown=_fresh(it_dest)),
        peers=[
            Contender("umoci unpack",
                      lambda i: ["umoci", "unpack", "--image", f"{img.layout}:{REF}", str(umoci_dest)],
                      setup=_fresh(umoci_dest), teardown=_fresh(umoci_dest), missing=ctx.missing("umoci")),
            # the same service without the CLI: what the unpack engine costs apart from typer's start-up
            Contender("imagetool's unpack service without the CLI (python -c)",
                      lambda i: [ctx.python, "-c", UNPACK_SERVICE, str(store), ref, str(svc_dest)],
                      setup=it_setup_svc, teardown=_fresh(svc_dest)),
            Contender(f"GNU tar {flag} (layers in order)",
                      lambda i: ["sh", "-c", tar_script, "sh", str(tar_dest)],
                      setup=_fresh(tar_dest), teardown=_fresh(tar_dest),
                      missing=ctx.missing("tar") or (ctx.missing("zstd") if zstd else None)),
        ],
        note="fresh target each run; imagetool's snapshots removed before each run (cold)")


def run_op(ctx: Context, image: str) -> Operation:
    ref = ctx.ref(image)
    rootfs = lambda: ctx.bundle(image) / "rootfs"  # noqa: E731

    def runtime(tool: str) -> Contender:
        state = ctx.d("runtime-state", tool)
        return Contender(
            f"{tool} run (bundle)",
            lambda i: [tool, "--root", str(state), "run", "-b", str(ctx.bundle(image)), f"imagetool-bench-{tool}-{i}"],
            prepare=lambda: ctx.bundle(image), missing=ctx.missing(tool))

    def podman_run(rt: str) -> Contender:
        return Contender(
            f"podman run --rm (--runtime {rt})",
            lambda i: ctx.podman("shared", "run", "--rm", "--network", "none", "--runtime", rt,
                                 *podman_ulimits(), ref, "true"),
            prepare=lambda: ctx.podman_with(image), missing=ctx.missing("podman") or ctx.missing(rt))

    return Operation(
        f"run --rm {image} true", group="run", image=image,
        imagetool=Contender("imagetool run --rm", lambda i: ctx.it(ctx.d("it-store"), "run", "--rm", "--network", "none", ref, "true"),
                            prepare=lambda: ctx.imagetool_store_with(image)),
        peers=[
            podman_run("runc"),
            podman_run("crun"),
            runtime("crun"),
            runtime("runc"),
            *([Contender("imagetool run --rm (the debian image, same rounds)",
                         lambda i: ctx.it(ctx.d("it-store"), "run", "--rm", "--network", "none", ctx.ref("debian"), "true"),
                         prepare=lambda: ctx.imagetool_store_with("debian"))] if image == "busybox" else []),
            Contender("unshare -fp --mount-proc chroot",
                      lambda i: ["unshare", "-fp", "--mount-proc", "chroot", str(rootfs()), "/bin/busybox", "true"],
                      prepare=lambda: ctx.bundle(image), missing=ctx.missing("unshare")),
        ],
        note="image already in each tool's store; crun/runc get a bundle made by umoci (process "
             "`/bin/busybox true`); imagetool and podman with --network none (like the bundles: no network "
             "set-up; both default to a bridge), podman with --ulimit set to this host's limits")


def podman_ulimits() -> list:
    """podman asks for nofile 1048576 and nproc 32768 by default; a root without CAP_SYS_RESOURCE
    (containers, CI sandboxes) cannot raise to that and runc/crun fail with EPERM: ask for what we have."""
    import resource

    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY:
        nofile = 1048576
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=1024:1024"]


STARTUP_CONTAINER = "bench-ps"  # the exited container `ps -a` lists and `inspect` shows, in each tool's store


def small_command_op(ctx: Context, *args: str) -> Operation:
    """An everyday command of fixed cost (`images`, `ps -a`, `inspect`) beside podman's same command:
    each store holds busybox and one exited container (STARTUP_CONTAINER); the editable install
    (.venv) beside the headline one when it exists."""
    store = ctx.d("it-store")

    def it_prepare():
        ctx.imagetool_store_with("busybox")
        ctx.once("it-container", lambda: ctx.check(
            ctx.it(store, "run", "--name", STARTUP_CONTAINER, ctx.ref("busybox"), "true"), "imagetool run --name"))

    def podman_prepare():
        ctx.podman_with("busybox")
        ctx.once("podman-container", lambda: ctx.check(
            ctx.podman("shared", "run", "--name", STARTUP_CONTAINER, "--network", "none", "--runtime", "runc",
                       *podman_ulimits(), ctx.ref("busybox"), "true"), "podman run --name"))

    peers = [Contender(f"podman {' '.join(args)}", lambda i: ctx.podman("shared", *args), prepare=podman_prepare,
                       missing=ctx.missing("podman") or ctx.missing("runc"))]
    if ctx.editable:
        peers.append(Contender(f"imagetool {' '.join(args)} (.venv: editable install, its interpreter)",
                               lambda i: [*ctx.editable, "--store", str(store), *args], prepare=it_prepare))
    shown = " ".join({ctx.ref("busybox"): "IMAGE", STARTUP_CONTAINER: "CONTAINER"}.get(a, a) for a in args)
    return Operation(
        f"startup: {shown}", group="startup", image="busybox",
        imagetool=Contender(f"imagetool {' '.join(args)}", lambda i: ctx.it(store, *args), prepare=it_prepare),
        peers=peers,
        note="each tool's store holds busybox and one exited container; podman with its own root on the tmpfs")


FLOOR_IMPORTS = "import re, json, dataclasses, pathlib"


def baseline_op(ctx: Context) -> Operation:
    """What the interpreter and the CLI framework cost before imagetool does any work."""
    return Operation(
        "startup: imagetool --version", group="baseline",
        imagetool=Contender("imagetool --version", lambda i: [*ctx.imagetool, "--version"]),
        peers=[
            Contender("/bin/true (the launcher's floor)", lambda i: ["/bin/true"]),
            Contender("python -c pass", lambda i: [ctx.python, "-c", "pass"]),
            Contender("python -c 'import typer'", lambda i: [ctx.python, "-c", "import typer"]),
            Contender(f"python -c '{FLOOR_IMPORTS}' (the standard library the store's code needs)",
                      lambda i: [ctx.python, "-c", FLOOR_IMPORTS]),
        ],
        note="interpreter + CLI framework only (subtract from `run` for imagetool's own work)")


def load_op(ctx: Context, image: str, transport: str = "docker-archive") -> Operation:
    store, dest = ctx.d("load", "it-store"), ctx.d("load", "skopeo-dest")
    arch = lambda: ctx.archive(image, transport)  # noqa: E731
    return Operation(
        f"load {image} ({transport})", group="load", image=image,
        imagetool=Contender("imagetool load", lambda i: ctx.it(store, "load", "-i", str(arch())),
                            prepare=arch, setup=_fresh(store), teardown=_fresh(store)),
        peers=[
            Contender("podman load", lambda i: ctx.podman("load", "load", "-q", "-i", str(arch())),
                      prepare=arch, setup=_fresh(ctx.d("podman", "load")), teardown=_fresh(ctx.d("podman", "load")),
                      missing=ctx.missing("podman")),
            Contender(f"skopeo copy {transport}: oci:",
                      lambda i: ["skopeo", "copy", "--quiet", f"{transport}:{arch()}", f"oci:{dest}:latest"],
                      prepare=arch, setup=_fresh(dest), teardown=_fresh(dest), missing=ctx.missing("skopeo")),
        ],
        note=f"fresh store each run; the {transport} was written by skopeo; podman load also extracts the "
             "layers into its storage, imagetool load does not (it unpacks at the first run)")


def save_op(ctx: Context, image: str, fmt: str = "docker") -> Operation:
    ref = ctx.ref(image)
    out = ctx.d("save", "out.tar")
    transport = "docker-archive" if fmt == "docker" else "oci-archive"

    def clean(i: int) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.unlink(missing_ok=True)

    return Operation(
        f"save {image} ({transport})", group="save", image=image,
        imagetool=Contender("imagetool save", lambda i: ctx.it(ctx.d("it-store"), "save", "--format", fmt,
                                                                "-o", str(out), ref),
                            prepare=lambda: ctx.imagetool_store_with(image), setup=clean, teardown=clean),
        peers=[
            Contender("podman save", lambda i: ctx.podman("shared", "save", "-q", "--format", transport,
                                                          "-o", str(out), ref),
                      prepare=lambda: ctx.podman_with(image), setup=clean, teardown=clean,
                      missing=ctx.missing("podman")),
            Contender(f"skopeo copy oci: {transport}:",
                      lambda i: ["skopeo", "copy", "--quiet", f"oci:{ctx.images[image].layout}:{REF}",
                                 f"{transport}:{out}:bench/{image}:latest"],
                      setup=clean, teardown=clean, missing=ctx.missing("skopeo")),
        ],
        note="output file removed after each run")


def operations(ctx: Context) -> list:
    """Every operation, in the order they run (and appear in the report)."""
    return [
        baseline_op(ctx),
        small_command_op(ctx, "images"),
        small_command_op(ctx, "ps", "-a"),
        small_command_op(ctx, "inspect", ctx.ref("busybox")),
        small_command_op(ctx, "inspect", STARTUP_CONTAINER),
        pull_op(ctx, "busybox"),
        pull_op(ctx, "debian"),
        pull_op(ctx, "debian-zstd"),
        repull_op(ctx, "debian"),
        unpack_op(ctx, "busybox"),
        unpack_op(ctx, "debian"),
        unpack_op(ctx, "debian-zstd"),
        run_op(ctx, "busybox"),
        run_op(ctx, "debian"),
        _cold_run_op(ctx, "debian"),
        load_op(ctx, "debian", "docker-archive"),
        load_op(ctx, "debian", "oci-archive"),
        save_op(ctx, "debian", "docker"),
        save_op(ctx, "debian", "oci"),
    ]


def _cold_run_op(ctx: Context, image: str) -> Operation:
    from benchmarks.coldrun import cold_run_op  # its own module (it builds on this one)

    return cold_run_op(ctx, image)


def cleanup(ctx: Context) -> None:
    """Best effort: stop containers the runtimes may have left (by our ids) before the tmpfs goes."""
    for tool in ("runc", "crun"):
        state = ctx.d("runtime-state", tool)
        if not state.is_dir() or not ctx.tools.get(tool):
            continue
        for cdir in state.iterdir():
            if cdir.name.startswith("imagetool-bench-"):
                subprocess.run([tool, "--root", str(state), "delete", "-f", cdir.name], capture_output=True)
    if shutil.which("podman") and ctx.d("podman").is_dir():
        for name in [p.name for p in ctx.d("podman").iterdir()]:
            subprocess.run(ctx.podman(name, "rm", "-af"), capture_output=True, timeout=120)
