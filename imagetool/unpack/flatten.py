"""A flattened root filesystem: every layer of an image applied in order onto one directory.

`flatten(store, image, dest)` applies the layer blobs straight from the store in plain mode
(whiteouts delete, no snapshots are made) into `dest`, which must be an empty directory; each
layer's diff_id is verified as it streams. On failure `dest` may hold a partial tree: use
`flatten_new(store, image, dest)` for the all-or-nothing version (temp dir + rename).
"""

from __future__ import annotations

import os
from pathlib import Path

from imagetool.errors import UnpackError
from imagetool.unpack.layers import LayerStream, Limits
from imagetool.unpack.snapshots import _layer_pairs, make_temp_dir, remove_tree


def flatten(store, image, dest, limits: Limits | None = None) -> Path:
    """Apply all of `image`'s layers onto the existing directory `dest` (see module docstring)."""
    limits = limits or Limits.from_env()
    dest = Path(dest)
    pairs = _layer_pairs(image)
    raw = stream = None
    try:
        if pairs:
            # the first layer starts decoding (on LayerStream's thread) before the applier's
            # modules load: a small image's unpack is bound by that decoding (busybox: ~8 ms of
            # inflate against ~5 ms of imports it now overlaps)
            desc, diff_id = pairs[0]
            raw = store.open(desc.digest)
            stream = LayerStream(raw, desc.media_type, diff_id, limits, name=f"layer 1 ({desc.digest})")
            stream.start()
        from imagetool.unpack.apply import Applier

        applier = Applier(dest, "plain", limits=limits)
        try:
            for i, (desc, diff_id) in enumerate(pairs):
                if i == 0:
                    applier.apply_stream(stream, f"layer 1 ({desc.digest})")
                    stream.close()
                    raw.close()
                    raw = stream = None
                else:
                    applier.apply_blob(store, desc, diff_id, f"layer {i + 1} ({desc.digest})")
            applier.finish()
        finally:
            applier.close()
    finally:
        if stream is not None:
            stream.close()
        if raw is not None:
            raw.close()
    return dest


def new_dir_atomically(dest, fill) -> Path:
    """Create directory `dest` by `fill(tmpdir)` in a sibling temp dir, then rename; all or nothing.

    `dest` must not exist, or be an empty directory (it is then replaced)."""
    dest = Path(os.path.abspath(dest))
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir() or dest.is_symlink() or any(os.scandir(dest)):
            raise UnpackError(f"{dest} already exists and is not an empty directory",
                              hint="choose a new directory, or remove it first")
    if not dest.parent.is_dir():
        raise UnpackError(f"{dest.parent} does not exist")
    tmp = make_temp_dir(dest.parent)
    try:
        fill(tmp)
        os.rename(tmp, dest)   # point of no return
    except BaseException:
        remove_tree(tmp)
        raise
    return dest


def flatten_new(store, image, dest, limits: Limits | None = None) -> Path:
    """`flatten` into a new directory `dest`, all or nothing."""
    return new_dir_atomically(dest, lambda tmp: flatten(store, image, tmp, limits))
