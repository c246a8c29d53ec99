"""Per-layer snapshots: each layer extracted once into `snapshots/<diffid-hex>/`, overlay format.

Snapshot lifecycle (the contract):
1. `snapshots/<hex>/` exists  ⇒ it is complete and never changes again (read-only lowerdir).
2. Creating one: extract into `snapshots/imagetool-tmp-<random>/` (overlay whiteouts, see apply.py),
   drain and verify the diff_id, then `rename()` it to `<hex>` — the point of no return.
3. Two processes racing on the same layer both extract; the loser's rename fails because the
   name exists, and it discards its temp dir and uses the winner's. Both succeed.
4. Any failure (diff_id mismatch, corrupt or truncated data, limits, unsafe entries) removes the
   temp dir: no partial snapshot is ever visible under a diff_id.
5. The store's shared GC lock is held while creating, so `gc` never removes a snapshot that is
   being made; callers that make the snapshots reachable (a container's state.json) should hold
   `store.lock_shared()` themselves across both steps.

While a snapshot is built, paths resolve through the merged view of the lower snapshots (a lower
symlink is followed, a lower directory a layer writes into is copied up with its attributes, a
hardlink to a lower file copies that file up), exactly as if the layer were applied onto the
mounted overlay. Such a snapshot therefore assumes the lower layers it was built on, yet it is
keyed by diff_id (the contract, and what gc keeps): two images that share a layer over different
bases share its snapshot. Docker/BuildKit layers write parent directories explicitly, so this only
matters for hand-made layers; a ChainID key would be exact.

Durability: snapshot files are not fsynced (a crash during extraction leaves only a temp dir,
which gc removes; a crash right after the rename may leave a snapshot with unwritten data on
filesystems without ordered data mode).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from imagetool.errors import UnpackError
from imagetool.unpack.layers import Limits

TEMP_PREFIX = "imagetool-tmp-"


def _layer_pairs(image) -> list:
    layers = list(image.manifest.layers)
    diff_ids = list(image.config.diff_ids)
    if len(layers) != len(diff_ids):
        raise UnpackError(f"image {image.name}: {len(layers)} layers but {len(diff_ids)} diff_ids in its config")
    return list(zip(layers, diff_ids))


def ensure_snapshots(store, image, limits: Limits | None = None) -> list[Path]:
    """The snapshot directories of `image`'s layers, base first, creating those that are missing."""
    limits = limits or Limits.from_env()
    paths: list[Path] = []
    with store.lock_shared():
        for i, (desc, diff_id) in enumerate(_layer_pairs(image)):
            final = store.snapshot_path(diff_id)
            if not final.is_dir():
                _create(store, desc, diff_id, final, tuple(reversed(paths)), limits,
                        f"layer {i + 1} ({desc.digest})")
            paths.append(final)
    return paths


def _create(store, desc, diff_id, final: Path, lowers: tuple, limits: Limits, name: str) -> None:
    from imagetool.unpack.apply import Applier  # lazy: `run` of an unpacked image never applies a layer

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=final.parent))
    try:
        os.chmod(tmp, 0o755)
        applier = Applier(tmp, "overlay", lowers=lowers, limits=limits)
        try:
            applier.apply_blob(store, desc, diff_id, name)
            applier.finish()
        finally:
            applier.close()
        # point of no return: the snapshot appears complete under its diff_id, or not at all
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and final.is_dir():
                shutil.rmtree(tmp)   # another process won the race: use its snapshot
                return
            raise UnpackError(f"cannot commit snapshot {final}: {e.strerror}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
