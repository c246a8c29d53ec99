"""The load service: open a source, plan (verify) it, commit it, and say what was loaded; and
`is_archive_arg`, the one test of whether `run IMAGE` names an archive.

Cheap to import (the run path imports it for every container): the standard library only at
module level; the loading machinery is imported by the functions that load.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False      # (typing itself costs 3 ms to import)
if TYPE_CHECKING:
    from imagetool.archive.plan import Loaded

#: a ref name that keeps an untagged image reachable (and findable by its digest), like
#: Docker's containerd store does with "moby-dangling@sha256:…"
DANGLING = "<none>@"

_PREFIXES = ("oci-archive:", "docker-archive:", "oci:")
_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd")


def load_images(store, where: str) -> list[Loaded]:
    """Load every image of `where` (path, directory or "-"); the images as tagged.

    Untagged images get the ref `<none>@<digest>` so they stay reachable and `run sha256:…`
    finds them."""
    from imagetool.archive.commit import commit
    from imagetool.archive.plan import Loaded, read_archive
    from imagetool.archive.source import open_source

    with open_source(where, store.root) as src:
        plan = read_archive(src, store)
        images = []
        for img in plan.images:
            if not img.names:
                img = Loaded(img.descriptor, (DANGLING + str(img.descriptor.digest),))
            images.append(img)
        plan.images = images
        commit(store, src, plan)
    return images


def load(store, where: str) -> list[str]:
    """`imagetool load`: the lines to print (`Loaded image: busybox:latest` / `Loaded image ID: …`)."""
    from imagetool import reference

    lines: list[str] = []
    for img in load_images(store, where):
        for name in img.names:
            if name.startswith(DANGLING):
                line = f"Loaded image ID: {img.descriptor.digest}"
            else:
                line = f"Loaded image: {reference.parse(name).familiar}"
            if line not in lines:
                lines.append(line)
    return lines


def is_archive_arg(text: str) -> bool:
    """Does `run IMAGE` name an archive rather than an image reference? A transport prefix
    (`oci-archive:`, `docker-archive:`, `oci:`) always does; a path (`./`, `/`, `../`) or a name
    ending in an archive suffix (.tar, .tar.gz, .tgz, .tar.zst, .tar.zstd) does when it exists."""
    if text.startswith(_PREFIXES):
        return True
    if text.startswith(("./", "/", "../")) or text.endswith(_SUFFIXES):
        return os.path.exists(text)
    return False


def load_for_run(store, image_arg: str) -> str | None:
    """For `run ./busybox.tar`, `run oci-archive:PATH[:REF]`, `docker-archive:PATH[:REF]`,
    `oci:DIR[:REF]`: load (blobs already stored are not written again) and return the name to
    run; None when `image_arg` is not an archive. With several images, REF picks one (a name,
    or a tag such as `latest`), else the first is run."""
    if not is_archive_arg(image_arg):
        return None
    from imagetool.errors import ArchiveError

    path, want = image_arg, None
    for prefix in _PREFIXES:
        if image_arg.startswith(prefix):
            path = image_arg[len(prefix):]
            if not os.path.exists(path) and ":" in path:
                path, want = path.split(":", 1)
            break
    images = load_images(store, path)
    if want:
        for img in images:
            for name in img.names:
                if _matches(name, want):
                    return _runnable(img, name)
        raise ArchiveError(f"{path}: no image named {want!r} in the archive",
                           hint="loaded: " + ", ".join(n for i in images for n in i.names))
    return _runnable(images[0], images[0].names[0])


def _runnable(img: Loaded, name: str) -> str:
    """What `image.load` resolves: the name, or the digest of an untagged image."""
    return str(img.descriptor.digest) if name.startswith(DANGLING) else name


def _matches(name: str, want: str) -> bool:
    from imagetool import reference

    if name == want or name.endswith(":" + want):
        return True
    try:
        return str(reference.parse(want)) == name
    except Exception:
        return False
