"""The cold run: `run --rm IMAGE true` of an image no store holds yet, imagetool beside its own
two-step forms (before: pull then unpack at the first run; after: pull preparing the snapshots)
and the peers (podman run on an empty root; skopeo copy + umoci unpack + runc run in sequence)."""

from __future__ import annotations

from benchmarks.measure import Contender, Operation
from benchmarks.specs import Context, _fresh, podman_ulimits


def cold_run_op(ctx: Context, image: str) -> Operation:
    ref = ctx.ref(image)
    store = ctx.d("cold", "it-store")
    layout, bundle, state = ctx.d("cold", "oci"), ctx.d("cold", "bundle"), ctx.d("cold", "runc-state")
    podman_root = ctx.d("podman", "cold")

    def fresh(*paths):
        hooks = [_fresh(p) for p in paths]
        return lambda i: [h(i) for h in hooks] and None

    def sh(*commands: list) -> list:
        return ["sh", "-c", " && ".join(" ".join(f"'{a}'" for a in argv) for argv in commands)]

    def oci_sequence(i: int) -> list:
        config = ctx.bundle(image) / "config.json"   # umoci's config with process `/bin/busybox true`
        return sh(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:latest"],
                  ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)],
                  ["cp", str(config), str(bundle / "config.json")],
                  [ctx.tools.get("runc") or "runc", "--root", str(state), "run", "-b", str(bundle),
                   f"imagetool-bench-cold-{i}"])

    return Operation(
        f"cold run --rm {image} true", group="cold run", image=image,
        imagetool=Contender("imagetool run --rm (pull pipelined with unpack)",
                            lambda i: ctx.it(store, "run", "--rm", "--network", "none", ref, "true"),
                            setup=fresh(store), teardown=fresh(store)),
        peers=[
            Contender("imagetool pull, then run --rm",
                      lambda i: sh(ctx.it(store, "pull", "-q", ref), ctx.it(store, "run", "--rm", "--network", "none", ref, "true")),
                      setup=fresh(store), teardown=fresh(store)),
            Contender("imagetool pull --no-unpack, then run --rm (before: unpacked by run)",
                      lambda i: sh(ctx.it(store, "pull", "-q", "--no-unpack", ref),
                                   ctx.it(store, "run", "--rm", "--network", "none", ref, "true")),
                      setup=fresh(store), teardown=fresh(store)),
            Contender("podman run --rm --runtime runc (empty root)",
                      lambda i: ctx.podman("cold", "run", "--rm", "--network", "none", "--runtime", "runc",
                                           "--tls-verify=false", *podman_ulimits(), ref, "true"),
                      setup=fresh(podman_root), teardown=fresh(podman_root), missing=ctx.missing("podman") or ctx.missing("runc")),
            Contender("skopeo copy + umoci unpack + runc run",
                      oci_sequence, prepare=lambda: ctx.bundle(image), setup=fresh(layout, bundle),
                      teardown=fresh(layout, bundle),
                      missing=ctx.missing("skopeo") or ctx.missing("umoci") or ctx.missing("runc")),
        ],
        note="an empty store/root/layout each run (blobs and layers come from the loopback registry); "
             "runc gets umoci's bundle with the process `/bin/busybox true`; imagetool and podman with --network none")
