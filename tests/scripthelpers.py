"""Render a `run --script` script for an image in a store (for tests/test_script.py and the v2 VM guest).

`python3 -m tests.scripthelpers STORE CONTAINER_DIR OPTIONS_JSON [COMMAND...]` prints the script
for the image `OPTIONS_JSON["image"]` (default busybox) with those RunOptions fields; it needs no
pytest and no typer (the VM guest has neither).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from imagetool.mount import Mount


def rootfs_mount(store_root: Path, ref: str, container_dir: Path) -> Mount:
    """The rootfs Mount unpack prepares for a container (overlay over the store's snapshots)."""
    from imagetool import image as image_mod
    from imagetool.unpack.rootfs import prepare_rootfs
    from store import Store

    st = Store.open(store_root)
    plan = prepare_rootfs(st, image_mod.load(st, ref), container_dir, "overlay")
    if isinstance(plan, Mount):
        return plan
    return Mount("overlay", "overlay", str(plan.target), tuple(plan.data.split(",")), cwd=str(plan.cwd))


def render(store_root: Path, container_dirs: Path, *command, ref="busybox", layout=None, interactive=False,
           **opts) -> str:
    """The script for `ref` in the store at `store_root` running `command` with RunOptions `opts`;
    the container's overlay plan is made under `container_dirs`/<id>."""
    from imagetool import image as image_mod
    from imagetool.containers import RunOptions
    from imagetool.runtime import script
    from imagetool.specgen import spec_from_image
    from store import Store

    img = image_mod.load(Store.open(store_root), ref)
    spec = spec_from_image(img.config, RunOptions(image=ref, command=list(command), interactive=interactive, **opts))
    cid = "script-" + os.urandom(6).hex()
    return script.render(spec, rootfs_mount(store_root, ref, Path(container_dirs) / cid), cid, layout,
                         image=img.name, interactive=interactive)


if __name__ == "__main__":
    store_root, cdirs, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    sys.stdout.write(render(Path(store_root), Path(cdirs), *sys.argv[4:], ref=options.pop("image", "busybox"),
                            **options))
