"""Unpack: layer blobs → per-layer snapshots, overlay rootfs mounts and flattened trees.

Modules: layers (decompress + diff_id), tarstream (the streaming tar reader), apply (one layer onto
a directory; names resolved by imagetool.safepath), whiteouts (what a whiteout is, in OCI and
overlay form), lowerview, snapshots, flatten, rootfs. unpack never imports the runtime: the
`imagetool unpack` service (flattened tree or OCI bundle) is imagetool.bundle.unpack_image.
"""
