"""How cost grows (issue 16): pull and unpack of images of ~50 MB, ~300 MB and ~1.2 GB, and of 1, 16
and 64 layers, imagetool beside skopeo (pull) and umoci (unpack): wall time and peak RSS per row.

`benchmarks/run --scaling` adds these operations after the others (`--only scaling` runs just them).
The images are generated deterministically and cached like the others (imagegen.py):
- size series: the debian-like image of imagegen at scales 0.16, 1.0 (the `debian` image itself)
  and 4.0: the same mix of small text files, large incompressible files and whiteouts, 5 layers;
- layer series: ~75 MB spread over 1, 16 or 64 gzip layers (each layer: its share of ~4000 small
  files and of 60 MB of incompressible data), busybox in the first layer.
`--quick` divides every size by 10. Each operation gets 1 warm-up and 3 counted rounds (the rounds
of the large rows take tens of seconds; the ratio and the RSS are what the table shows).
"""

from __future__ import annotations

import json
import random
import statistics

from benchmarks.common import CACHE, log
from benchmarks.imagegen import DEBIAN_CONFIG, GEN_VERSION, REF, BenchImage, _cached, _corpus, _debian_layers, _facts
from benchmarks.measure import Contender, OpResult, Operation

SIZE_SCALES = {"size-50mb": 0.16, "size-300mb": 1.0, "size-1.2gb": 4.0}  # names: registry repositories (lowercase)
LAYER_COUNTS = (1, 16, 64)
RUNS = 3  # counted rounds per scaling operation


def layer_series_name(n: int) -> str:
    return f"layers-{n}"


def _layered(n: int, scale: float) -> list[list]:
    """~75 MB × scale of content over `n` layers: ~4000 × scale small text files and 60 MB × scale of
    random bytes, each layer its equal share (a directory of its own), busybox in the first."""
    from fixtures.images import busybox_entries
    from fixtures.tarbuild import directory, file

    rng = random.Random(20261203 + n)
    corpus = _corpus(rng)
    small_total, big_total = max(n, int(4000 * scale)), int(60_000_000 * scale)
    layers = []
    for k in range(n):
        entries = busybox_entries() if k == 0 else []
        top = f"opt/l{k:03d}"
        entries += [directory("opt"), directory(top)]
        for i in range(small_total // n):
            size = int(rng.triangular(200, 16_000, 1_500))
            off = rng.randrange(0, len(corpus) - size)
            entries.append(file(f"{top}/f{i:05d}.txt", corpus[off:off + size]))
        entries.append(file(f"{top}/blob.bin", rng.randbytes(big_total // n)))
        layers.append(entries)
    return layers


def _build(name: str, key: str, make_layers) -> BenchImage:
    """The cached layout `name`-`key` of the gzip layers `make_layers()` returns, with its facts."""
    meta_path = CACHE / f"{name}-meta-{key}.json"
    layout = CACHE / f"{name}-{key}"
    if not (layout / ".complete").is_file() or not meta_path.is_file():
        from fixtures.images import Layer, build_image, write_oci_layout
        from fixtures.tarbuild import build_tar

        log(f"generating {name} (cached in {CACHE}) …")
        layers = make_layers()
        files = sum(len(entries) for entries in layers)
        built = []
        tar_bytes = 0
        while layers:   # one layer's entries at a time: the largest image stays within a few GB of RAM
            tar = build_tar(layers.pop(0))
            tar_bytes += len(tar)
            built.append(Layer(tar, "gzip"))
            del tar
        img = build_image(built, config=DEBIAN_CONFIG)
        _cached(name, key, lambda p: write_oci_layout(p, {REF: img}))
        meta_path.write_text(json.dumps({"files": files, "tar_bytes": tar_bytes}))
        del img, built
    meta = json.loads(meta_path.read_text())
    return _facts(name, layout, meta["files"], meta["tar_bytes"])


def generate(scale: float, existing: dict) -> dict[str, BenchImage]:
    """The scaling images at `scale` (1.0 full, 0.1 quick); the ~300 MB row is imagegen's `debian`."""
    out = {}
    for name, s in SIZE_SCALES.items():
        if s == 1.0 and "debian" in existing:
            out[name] = existing["debian"]
            continue
        key = f"v{GEN_VERSION}-s{s * scale:g}"
        out[name] = _build(name, key, lambda s=s: _debian_layers(s * scale))
    for n in LAYER_COUNTS:
        key = f"v{GEN_VERSION}-s{scale:g}"
        out[layer_series_name(n)] = _build(layer_series_name(n), key, lambda n=n: _layered(n, scale))
    return out


# ---------------------------------------------------------------- operations


def operations(ctx, images: dict[str, BenchImage]) -> list[Operation]:
    """A pull and an unpack operation per scaling image (groups "scaling pull" / "scaling unpack")."""
    from benchmarks.specs import _fresh

    ops = []
    for name, img in images.items():
        img = ctx.images[img.name]   # its copy on the tmpfs (the ~300 MB row is `debian` itself)
        ref = ctx.ref(img.name)
        base = ctx.d("scaling", name)
        store, blobs_store, dest = base / "pull-store", base / "pull-blobs", base / "skopeo"
        ops.append(Operation(
            f"scaling pull {name}", group="scaling pull", image=name,
            imagetool=Contender("imagetool pull", lambda i, ref=ref, store=store: ctx.it(store, "pull", "-q", ref),
                                setup=_fresh(store), teardown=_fresh(store)),
            peers=[
                Contender("imagetool pull --no-unpack (blobs only)",
                          lambda i, ref=ref, s=blobs_store: ctx.it(s, "pull", "-q", "--no-unpack", ref),
                          setup=_fresh(blobs_store), teardown=_fresh(blobs_store)),
                Contender("skopeo copy docker:// oci:",
                          lambda i, ref=ref, dest=dest: ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                                                         f"docker://{ref}", f"oci:{dest}:latest"],
                          setup=_fresh(dest), teardown=_fresh(dest), missing=ctx.missing("skopeo")),
            ],
            note=f"{img.describe}; fresh destination each run"))
        ops.append(_unpack_op(ctx, name, img, base))
    return ops


def _unpack_op(ctx, name: str, img: BenchImage, base) -> Operation:
    from benchmarks.common import rmtree
    from benchmarks.specs import _fresh

    ref = ctx.ref(img.name)
    store, it_dest, umoci_dest = base / "store", base / "unpack-it", base / "unpack-umoci"

    def fill() -> None:
        ctx.check(ctx.it(store, "pull", "-q", "--no-unpack", ref), f"imagetool pull {name}")

    def setup(i: int) -> None:
        _fresh(it_dest)(i)
        for p in (store / "snapshots").glob("*"):   # cold: no layer extracted by the previous run
            rmtree(p)

    return Operation(
        f"scaling unpack {name}", group="scaling unpack", image=name,
        imagetool=Contender("imagetool unpack", lambda i: ctx.it(store, "unpack", ref, str(it_dest)),
                            prepare=lambda: ctx.once(f"scaling-store-{name}", fill), setup=setup,
                            teardown=_fresh(it_dest)),
        peers=[Contender("umoci unpack", lambda i: ["umoci", "unpack", "--image", f"{img.layout}:{REF}", str(umoci_dest)],
                         setup=_fresh(umoci_dest), teardown=_fresh(umoci_dest), missing=ctx.missing("umoci"))],
        note=f"{img.describe}; fresh target each run, imagetool's snapshots removed before each run (cold)")


# ---------------------------------------------------------------- report


def _cell(r) -> str:
    if not r.ok:
        return r.status.split(":")[0]
    return f"{_s(r.median)} / {r.peak_rss_kb / 1024:.0f} MB"


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def section(ops: list[OpResult], images: dict[str, BenchImage]) -> list[str]:
    """The scaling table: one row per image, each tool's median time / peak RSS, and imagetool's time
    per MB of uncompressed content (flat when time grows linearly)."""
    pulls = {o.op.image: o for o in ops if o.op.group == "scaling pull"}
    unpacks = {o.op.image: o for o in ops if o.op.group == "scaling unpack"}
    if not pulls and not unpacks:
        return []
    out = ["", "## How cost grows (issue 16): pull and unpack by image size and layer count", "",
           "Median wall time / peak RSS (3 counted rounds each); ms/MB is imagetool's median time per MB of "
           "uncompressed layer content (flat = linear time).", "",
           "| image | layers | MB (tar / blobs) | imagetool pull | pull --no-unpack | skopeo copy | ms/MB pull | "
           "imagetool unpack | umoci unpack | ms/MB unpack |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, img in images.items():
        p, u = pulls.get(name), unpacks.get(name)
        mb = img.tar_bytes / 1e6
        cells = [name, str(img.layers), f"{mb:.0f} / {img.blob_bytes / 1e6:.0f}"]
        if p:
            cells += [_cell(r) for r in p.results[:3]]
            cells.append(f"{p.imagetool.median * 1000 / mb:.2f}" if p.imagetool.ok else "—")
        else:
            cells += ["—"] * 4
        if u:
            cells += [_cell(r) for r in u.results[:2]]
            cells.append(f"{u.imagetool.median * 1000 / mb:.2f}" if u.imagetool.ok else "—")
        else:
            cells += ["—"] * 3
        out.append("| " + " | ".join(cells) + " |")
    rss = [o.imagetool.peak_rss_kb / 1024 for o in (*pulls.values(), *unpacks.values()) if o.imagetool.ok]
    if rss:
        out += ["", f"imagetool's peak RSS over these rows: {min(rss):.0f}–{max(rss):.0f} MB "
                f"(median {statistics.median(rss):.0f} MB)."]
    return out
