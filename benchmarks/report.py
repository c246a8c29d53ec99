"""The report: one Markdown table (operation, imagetool median, each peer's median, ratio with its
min–max over the pairs, imagetool's peak RSS), the goals of issues 3-6 checked, the machine."""

from __future__ import annotations

import statistics

from benchmarks.measure import OpResult

MB = 1024  # ru_maxrss is in KiB


def fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(ratios: list[float]) -> str:
    if not ratios:
        return "—"
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"


def table(ops: list[OpResult]) -> str:
    lines = ["| operation | imagetool median | peer | peer median | ratio imagetool/peer (min–max) | imagetool peak RSS |",
             "|---|---|---|---|---|---|"]
    for o in ops:
        it = o.imagetool
        it_cell = fmt_s(it.median) if it.ok else it.status
        rss = f"{it.peak_rss_kb / MB:.0f} MB" if it.ok else "—"
        for n, peer in enumerate(o.results[1:]):
            first = n == 0
            lines.append("| {} | {} | {} | {} | {} | {} |".format(
                f"**{o.op.name}** ({len(it.samples)} runs)" if first and it.ok else
                (f"**{o.op.name}**" if first else ""), it_cell if first else "", peer.name,
                fmt_s(peer.median) if peer.ok else peer.status, fmt_ratio(o.ratios(peer)), rss if first else ""))
    return "\n".join(lines)


def _find(ops: list[OpResult], group: str, image: str | None = None) -> list[OpResult]:
    return [o for o in ops if o.op.group == group and (image is None or o.op.image == image)]


RSS_LIMIT_MB = 60  # issue 16: on every row, whatever the image size


def peer_ratios(a, b) -> list[float]:
    """a/b per round for two contenders of one operation (their samples were taken in the same rounds)."""
    if not (a.ok and b.ok):
        return []
    return [x.seconds / y.seconds for x, y in zip(a.samples, b.samples) if y.seconds > 0]


def _peer(o: OpResult, prefix: str):
    for r in o.results[1:]:
        if r.name.startswith(prefix):
            return r
    return None


def goals(ops: list[OpResult], breakdowns: dict | None = None) -> list[str]:
    """The goals of the pull/unpack/run/archive issues, each checked: '✅ …', '❌ …' or '— … (why not)'."""
    out = []

    def ratio_goal(o: OpResult, prefix: str, limit: float, text: str) -> None:
        peer = _peer(o, prefix)
        if peer is None:
            return
        rs = o.ratios(peer)
        if not rs:
            why = o.imagetool.status if not o.imagetool.ok else peer.status
            out.append(f"— {o.op.name}: {text} — not measured ({why})")
            return
        med = statistics.median(rs)
        out.append(f"{'✅' if med <= limit else '❌'} {o.op.name}: {text} — ratio {med:.2f}")

    def rss_goal(o: OpResult) -> None:
        if o.imagetool.ok:
            mb = o.imagetool.peak_rss_kb / MB
            out.append(f"{'✅' if mb < RSS_LIMIT_MB else '❌'} {o.op.name}: imagetool peak RSS < {RSS_LIMIT_MB} MB "
                       f"— {mb:.0f} MB")

    for o in _find(ops, "startup"):
        ratio_goal(o, "podman", 1.0, "≤ 1.0× podman's same command")
        rss_goal(o)
    for o in _find(ops, "pull"):   # like for like: blobs only beside skopeo; with the snapshots beside podman
        blobs, skopeo = _peer(o, "imagetool pull --no-unpack"), _peer(o, "skopeo")
        if blobs is not None and skopeo is not None:
            rs = peer_ratios(blobs, skopeo)
            out.append(f"{'✅' if rs and statistics.median(rs) <= 1.0 else '❌' if rs else '—'} {o.op.name}: "
                       f"pull --no-unpack/skopeo copy ≤ 1.0 — " + (f"ratio {statistics.median(rs):.2f}" if rs else
                                                                    f"not measured ({blobs.status}, {skopeo.status})"))
        ratio_goal(o, "podman", 1.0, "pull (snapshots prepared)/podman pull ≤ 1.0")
        rss_goal(o)
    for o in _find(ops, "re-pull") + _find(ops, "scaling pull") + _find(ops, "scaling unpack"):
        rss_goal(o)
    for o in _find(ops, "unpack"):
        ratio_goal(o, "umoci", 1.0, "faster than umoci")
        ratio_goal(o, "GNU tar", 1.3, "within 1.3× of GNU tar")
        rss_goal(o)
    runs = {o.op.image: o for o in _find(ops, "run")}
    base = _find(ops, "baseline")
    for o in runs.values():
        ratio_goal(o, "podman", 0.4, "under 0.4× podman run")
        rss_goal(o)
    for o in _find(ops, "cold run"):
        ratio_goal(o, "podman", 0.5, "≤ 0.5× podman run --rm of the uncached image")
        ratio_goal(o, "skopeo copy + umoci", 1.0, "below skopeo copy + umoci unpack + runc run")
        rss_goal(o)
    bb = runs.get("busybox")
    traced = (breakdowns or {}).get("busybox")
    own = how = None
    if isinstance(traced, dict) and "total" in traced:
        own, how = traced["total"] / 1000, "IMAGETOOL_TRACE_TIMING total"
    elif bb and base and bb.imagetool.ok and base[0].imagetool.ok:
        own, how = bb.imagetool.median - base[0].imagetool.median, "run − `imagetool --version`"
    if bb and own is not None:
        crun, runc = _peer(bb, "crun"), _peer(bb, "runc")
        if crun and crun.ok:
            ref, name = crun.median, "crun"
        elif runc and runc.ok:
            ref, name = runc.median, "runc (crun did not run)"
        else:
            ref, name = None, ""
        if ref:
            ok = own <= 2 * ref
            out.append(f"{'✅' if ok else '❌'} run busybox: imagetool's own work ({how}) "
                       f"within 2× {name}'s whole run — {fmt_s(own)} vs 2 × {fmt_s(ref)}")
    deb = runs.get("debian")
    same = _peer(bb, "imagetool run --rm (the debian") if bb else None
    if same is not None and same.ok and bb.imagetool.ok:
        r = statistics.median(1 / x for x in bb.ratios(same))
        out.append(f"{'✅' if r <= 1.10 else '❌'} run: 300 MB image within 10% of busybox (same rounds) — "
                   f"{fmt_s(same.median)} vs {fmt_s(bb.imagetool.median)} ({(r - 1) * 100:+.0f}%)")
    elif bb and deb and bb.imagetool.ok and deb.imagetool.ok:
        r = deb.imagetool.median / bb.imagetool.median
        out.append(f"{'✅' if r <= 1.10 else '❌'} run: 300 MB image within 10% of busybox — "
                   f"{fmt_s(deb.imagetool.median)} vs {fmt_s(bb.imagetool.median)} ({(r - 1) * 100:+.0f}%)")
    for o in _find(ops, "load") + _find(ops, "save"):
        if not o.imagetool.ok:
            out.append(f"— {o.op.name}: imagetool fastest — not measured ({o.imagetool.status})")
            continue
        peers = [p for p in o.results[1:] if p.ok]
        fastest = all(o.imagetool.median <= p.median for p in peers)
        others = ", ".join(f"{p.name} {fmt_s(p.median)}" for p in peers)
        out.append(f"{'✅' if fastest else '❌'} {o.op.name}: imagetool fastest — {fmt_s(o.imagetool.median)} "
                   f"vs {others}")
        rss_goal(o)
    return out


def rootfs_table(rootfs) -> list[str]:
    """benchmarks/rootfs.py's rows: the time to create a container rootfs must not grow with size."""
    if rootfs is None:
        return []
    out = ["", "## Container rootfs creation (issue 4: must not grow with image size)", ""]
    if isinstance(rootfs, str):
        return out + [f"- {rootfs}"]
    out += ["In-process, snapshots present: `overlay_plan` + `mount -t overlay` (+ umount); "
            "the one-time snapshot extraction for information.", "",
            "| image | plan | plan + mount | snapshots (once) |", "|---|---|---|---|"]
    for r in rootfs:
        out.append(f"| {r['name']} | {fmt_s(r['plan_median_s'])} | {fmt_s(r['plan_plus_mount_median_s'])} | "
                   f"{fmt_s(r['snapshots_once_s'])} |")
    return out


def breakdown_table(breakdowns: dict, ops: list[OpResult]) -> list[str]:
    """imagetool run's own account of its time (IMAGETOOL_TRACE_TIMING), one column per image."""
    if not breakdowns:
        return []
    out = ["", "## Where `imagetool run` spends its time (IMAGETOOL_TRACE_TIMING=1, medians)", ""]
    tables = {k: v for k, v in breakdowns.items() if isinstance(v, dict)}
    for k, v in breakdowns.items():
        if not isinstance(v, dict):
            out.append(f"- {k}: {v}")
    if tables:
        steps = list(dict.fromkeys(s for v in tables.values() for s in v))
        out += ["| step | " + " | ".join(tables) + " |", "|---" * (len(tables) + 1) + "|"]
        for st in steps:
            out.append(f"| {st} | " + " | ".join(f"{v[st]:.1f} ms" if st in v else "" for v in tables.values()) + " |")
        out += ["", "Each step is the time since the previous mark; the first counts from the import of "
                "`imagetool.containers`. The interpreter's start-up and the CLI's imports come before "
                "(see the startup rows and the profiles)."]
    return out


def markdown(ops: list[OpResult], machine: dict, meta: dict, images: list[str], profiles: dict | None = None,
             rootfs=None, breakdowns: dict | None = None, scaling_images: dict | None = None) -> str:
    parts = [f"# imagetool benchmarks — {meta['date']} on {machine['host']}", ""]
    parts.append(f"Command: `{meta['command']}` ({meta['mode']}: {meta['warmups']} warm-up + at least {meta['runs']} "
                 f"counted runs per tool, more for cheap operations (the count is by each operation), "
                 f"alternating A B C … each round; total {meta['elapsed']:.0f} s). "
                 "Medians of wall time; the ratio is imagetool/peer per round (median, min–max); "
                 "peak RSS is the largest ru_maxrss of imagetool's process tree over the counted runs.")
    parts += ["", "## Results", "", table(ops), "", "## Goals (issues 3-6 and 16)", ""]
    parts += [f"- {g}" for g in goals(ops, breakdowns)] or ["- (nothing to check)"]
    parts += breakdown_table(breakdowns or {}, ops)
    parts += rootfs_table(rootfs)
    if scaling_images:
        from benchmarks.scaling import section

        parts += section(ops, scaling_images)
    parts += ["", "## Images", ""] + [f"- {d}" for d in images]
    parts += ["", "## Notes", ""] + [f"- **{o.op.name}**: {o.op.note}" for o in ops if o.op.note]
    parts += [f"- {f}" for f in meta.get("fallbacks", [])]
    parts += ["", "## Machine", "", "| | |", "|---|---|"]
    parts += [f"| {k} | {v.replace('|', '/')} |" for k, v in machine.items()]
    if profiles:
        parts += ["", "## Where imagetool's time goes (extra runs under `-X importtime` and cProfile, not counted above)", ""]
        for name, text in profiles.items():
            parts += [f"<details><summary>{name}</summary>", "", "```", text, "```", "", "</details>", ""]
    return "\n".join(parts) + "\n"


def summary(ops: list[OpResult]) -> str:
    lines = []
    for o in ops:
        it = o.imagetool
        head = f"{o.op.name:<34} imagetool {fmt_s(it.median) if it.ok else it.status}"
        cells = []
        for p in o.results[1:]:
            rs = o.ratios(p)
            cells.append(f"{p.name.split(' (')[0]} {fmt_s(p.median) if p.ok else p.status.split(':')[0]}"
                         + (f" ×{statistics.median(rs):.2f}" if rs else ""))
        lines.append(head + " | " + "; ".join(cells))
    return "\n".join(lines)
