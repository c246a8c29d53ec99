"""The benchmark images, generated deterministically and cached as OCI layouts under .cache/bench/.

- busybox: `fixtures.images.busybox_image()` (one layer from the host's /bin/busybox).
- debian: a "debian-like" image of 5 gzip layers, ~300 MB uncompressed at scale 1.0: ~20k small
  compressible files spread over package-like directories, a few large incompressible files,
  and whiteouts (plain and opaque) in the upper layers. busybox is in the base layer so the image
  can run `true`.
- debian-zstd: the same layers compressed with zstd.

`--quick` uses scale 0.1 (~2k files, ~30 MB). The same scale always gives the same bytes, so a
cached layout is reused until GEN_VERSION changes. Each layout has the single ref "latest".
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import CACHE, log

GEN_VERSION = "3"
REF = "latest"


@dataclass(frozen=True, slots=True)
class BenchImage:
    """One generated image: its OCI layout (ref "latest") and a few facts for the report."""

    name: str  # busybox | debian | debian-zstd
    layout: Path
    layers: int
    files: int
    tar_bytes: int  # uncompressed size of all layers
    blob_bytes: int  # compressed size of all layers

    @property
    def describe(self) -> str:
        return (f"{self.name}: {self.layers} layer(s), {self.files} tar entries, "
                f"{self.tar_bytes / 1e6:.0f} MB uncompressed, {self.blob_bytes / 1e6:.0f} MB compressed")

    def layer_blobs(self) -> list[Path]:
        """The layer blob files in order (for GNU tar), read from the layout's manifest."""
        index = json.loads((self.layout / "index.json").read_text())
        mdesc = index["manifests"][0]["digest"].split(":", 1)[1]
        manifest = json.loads((self.layout / "blobs" / "sha256" / mdesc).read_text())
        return [self.layout / "blobs" / "sha256" / la["digest"].split(":", 1)[1] for la in manifest["layers"]]


# ---------------------------------------------------------------- content


_WORDS = ("lib usr share doc config module package version debian linux amd64 include static shared "
          "object symbol table header license copyright changelog readme manual locale python perl "
          "systemd service socket timer network address interface kernel driver firmware").split()


def _corpus(rng: random.Random, size: int = 1 << 20) -> bytes:
    """~1 MB of word salad: text that compresses like real documentation (~3-4x)."""
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + "\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def _debian_layers(scale: float) -> list[list]:
    """Five lists of TarEntry; sizes scale linearly (files and bytes) with `scale`."""
    from fixtures.images import busybox_entries
    from fixtures.tarbuild import directory, file, opaque, symlink, whiteout

    rng = random.Random(20240601)
    corpus = _corpus(rng)

    def small(path: str) -> object:
        n = int(rng.triangular(200, 16_000, 1_500))
        off = rng.randrange(0, len(corpus) - n)
        return file(path, corpus[off:off + n], mode=0o755 if "/bin/" in path else 0o644)

    def big(path: str, megabytes: float) -> object:
        return file(path, rng.randbytes(int(megabytes * scale * 1_000_000)), mode=0o644)

    def tree(prefix: str, count: int, tag: str) -> tuple[list, list[str]]:
        """`count` small files under prefix/<pkgN>/..., with their dirs; returns (entries, file paths)."""
        entries, paths = [], []
        count = max(1, int(count * scale))
        per_pkg = 40
        for p in range((count + per_pkg - 1) // per_pkg):
            pkg = f"{prefix}/{tag}{p:04d}"
            entries.append(directory(pkg))
            entries.append(directory(f"{pkg}/sub"))
            for i in range(min(per_pkg, count - p * per_pkg)):
                path = f"{pkg}/{'sub/' if i % 3 == 0 else ''}f{i:03d}.txt"
                entries.append(small(path))
                paths.append(path)
        return entries, paths

    def dirs(*paths: str) -> list:
        return [directory(p) for p in paths]

    # layer 1: base system (busybox + the bulk of the small files)
    l1 = busybox_entries()
    l1 += dirs("usr/lib", "usr/share", "usr/share/doc", "usr/share/locale", "var/lib", "var/cache")
    for prefix, n, tag in (("usr/lib", 5200, "lib"), ("usr/share/doc", 4200, "doc"),
                           ("usr/share/locale", 2000, "loc"), ("var/cache", 600, "cache")):
        e, _ = tree(prefix, n, tag)
        l1 += e
    l1.append(symlink("usr/bin/sh", "/bin/busybox"))
    l1_doc = [e.path for e in l1 if e.path.startswith("usr/share/doc/doc00") and e.type == "file"]

    # layer 2: more packages and two large incompressible libraries
    l2 = dirs("usr/lib", "opt", "opt/big")
    e, l2_files = tree("opt/pkgs", 4000, "pkg")
    l2 += [directory("opt/pkgs")] + e
    l2 += [big("opt/big/libhuge.so.1", 40), big("opt/big/model.bin", 40)]

    # layer 3: updates: one large file, deletions of base files, an opaque dir
    l3 = dirs("usr", "usr/share", "usr/share/doc", "var", "var/cache", "opt", "opt/big")
    l3 += [whiteout(p) for p in l1_doc[: max(1, int(300 * scale))]]
    l3 += [opaque("var/cache"), file("var/cache/fresh.txt", "rebuilt cache\n")]
    e, _ = tree("usr/share/upd", 2500, "upd")
    l3 += [directory("usr/share/upd")] + e
    l3.append(big("opt/big/data.pack", 60))

    # layer 4: an application: another large file, deletes one from layer 2, replaces files
    l4 = dirs("opt", "opt/big", "opt/pkgs", "srv", "srv/app")
    l4.append(whiteout("opt/big/model.bin"))
    l4 += [whiteout(p) for p in l2_files[: max(1, int(200 * scale))]]
    e, _ = tree("srv/app/static", 1300, "st")
    l4 += [directory("srv/app/static")] + e
    l4.append(big("srv/app/assets.bin", 40))

    # layer 5: configuration on top
    l5 = dirs("etc", "etc/app", "srv", "srv/app")
    e, _ = tree("etc/app/conf.d", 300, "c")
    l5 += [directory("etc/app/conf.d")] + e
    l5 += [whiteout("var/cache/fresh.txt"), file("etc/app/app.conf", "listen = 8080\n")]
    return [l1, l2, l3, l4, l5]


DEBIAN_CONFIG = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                 "Cmd": ["sh"], "WorkingDir": "/"}


# ---------------------------------------------------------------- caching


def _cached(name: str, key: str, build) -> Path:
    """The layout for (name, key), built by `build(path)` into a temp dir then renamed (atomic)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    final = CACHE / f"{name}-{key}"
    if (final / "index.json").is_file() and (final / ".complete").is_file():
        return final
    tmp = CACHE / f".imagetool-tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build(tmp)
        (tmp / ".complete").write_text("ok\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _facts(name: str, layout: Path, files: int, tar_bytes: int) -> BenchImage:
    img = BenchImage(name, layout, 0, files, tar_bytes, 0)
    blobs = img.layer_blobs()
    return BenchImage(name, layout, len(blobs), files, tar_bytes, sum(b.stat().st_size for b in blobs))


def generate(scale: float) -> dict[str, BenchImage]:
    """busybox, debian and debian-zstd at `scale` (1.0 full, 0.1 quick), from the cache when present."""
    from fixtures.images import Layer, build_image, busybox_image, write_oci_layout

    out = {}
    bb = busybox_image()
    bb_key = f"v{GEN_VERSION}-{bb.manifest_digest.split(':')[1][:12]}"
    bb_layout = _cached("busybox", bb_key, lambda p: write_oci_layout(p, {REF: bb}))
    from fixtures.images import busybox_entries

    out["busybox"] = _facts("busybox", bb_layout, len(busybox_entries()), sum(len(la.tar) for la in bb.layers))

    key = f"v{GEN_VERSION}-s{scale:g}"
    meta_path = CACHE / f"debian-meta-{key}.json"
    need = [c for c in ("gzip", "zstd")
            if not (CACHE / f"{'debian' if c == 'gzip' else 'debian-zstd'}-{key}" / ".complete").is_file()]
    if need or not meta_path.is_file():
        log(f"generating the debian-like images at scale {scale:g} (cached in {CACHE}) …")
        from fixtures.tarbuild import build_tar

        layers = _debian_layers(scale)
        tars = [build_tar(entries) for entries in layers]
        files = sum(len(entries) for entries in layers)
        del layers
        meta_path.write_text(json.dumps({"files": files, "tar_bytes": sum(len(t) for t in tars)}))
        for comp in ("gzip", "zstd"):
            name = "debian" if comp == "gzip" else "debian-zstd"
            img = build_image([Layer(t, comp) for t in tars], config=DEBIAN_CONFIG)
            _cached(name, key, lambda p, img=img: write_oci_layout(p, {REF: img}))
            del img
    meta = json.loads(meta_path.read_text())
    for name in ("debian", "debian-zstd"):
        out[name] = _facts(name, CACHE / f"{name}-{key}", meta["files"], meta["tar_bytes"])
    return out
