"""Where a reference is pulled from: mirrors, location rewrites and blocked registries for any
registry, in the containers-registries.conf(5) v2 format.

    [[registry]]
    prefix = "docker.io"                 # what image names it applies to (default: location);
    location = "docker.io"               # "*.example.com" matches every subdomain
    insecure = false                     # plain HTTP / unverified TLS allowed
    blocked = false                      # pulling (and pushing) names under the prefix is refused
    pull-from-mirror = "all"             # or "digest-only" / "tag-only"
    [[registry.mirror]]
    location = "mirror.local:5000/hub"   # tried in order before the location
    insecure = true

`endpoints(ref)` lists what to try, in order: every mirror the policy allows, then the registry
(the reference rewritten from the prefix to each location; the longest matching prefix wins).
The file is the first of $IMAGETOOL_CONFIG_DIR/registries.conf (tests: only that one), else
$XDG_CONFIG_HOME/imagetool/registries.conf (not root), /etc/imagetool/registries.conf,
/etc/containers/registries.conf — a user file replaces the system one, as in containers. The
older registries.json `mirrors` (hosts for a domain) are read when no [[registry]] matches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imagetool import reference, settings
from imagetool.errors import ImagetoolError, InvalidReference, RegistryError

POLICIES = ("all", "digest-only", "tag-only")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place to ask: the reference as this endpoint names it."""

    ref: reference.Reference
    insecure: bool = False
    mirror: bool = False
    url: str | None = None     # a registries.json mirror: its host or URL, for the same path


def config_files() -> list[Path]:
    if os.environ.get("IMAGETOOL_CONFIG_DIR"):
        return [settings.config_dir() / "registries.conf"]
    files = []
    if os.geteuid() != 0:
        xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        files.append(Path(xdg) / "imagetool" / "registries.conf")
    return files + [Path("/etc/imagetool/registries.conf"), Path("/etc/containers/registries.conf")]


def _load() -> tuple[Path | None, list[dict]]:
    """(the file read, its [[registry]] tables, validated); (None, []) when there is none."""
    for path in config_files():
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as e:
            raise ImagetoolError(f"cannot read {path}: {e}") from None
        import tomllib  # only when there is a file: a pull without one does not pay for it

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ImagetoolError(f"cannot read {path}: {e}") from None
        tables = data.get("registry") or []
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ImagetoolError(f"{path}: [[registry]] must be tables")
        for t in tables:
            _check(path, t)
        return path, tables
    return None, []


def _check(path: Path, t: dict) -> None:
    if not isinstance(t.get("prefix", t.get("location")), str) or not (t.get("prefix") or t.get("location")):
        raise ImagetoolError(f"{path}: a [[registry]] needs a prefix or a location")
    if t.get("pull-from-mirror", "all") not in POLICIES:
        raise ImagetoolError(f"{path}: pull-from-mirror must be one of {', '.join(POLICIES)}")
    mirrors = t.get("mirror") or []
    if not isinstance(mirrors, list) or not all(isinstance(m, dict) and isinstance(m.get("location"), str)
                                                for m in mirrors):
        raise ImagetoolError(f"{path}: every [[registry.mirror]] needs a location")


def _matches(prefix: str, name: str) -> bool:
    if prefix.startswith("*."):
        domain = name.split("/", 1)[0]
        return domain.endswith(prefix[1:])
    return name == prefix or name.startswith(prefix + "/")


def _rewrite(ref, prefix: str, location: str, where: str):
    """`ref` with `prefix` replaced by `location` (a wildcard prefix rewrites nothing)."""
    if prefix.startswith("*.") or location == prefix:
        return ref
    rest = ref.name[len(prefix):]
    suffix = f"@{ref.digest}" if ref.digest else f":{ref.tag or reference.DEFAULT_TAG}"
    try:
        return reference.parse(location.rstrip("/") + rest + suffix)
    except InvalidReference as e:
        raise ImagetoolError(f"{where}: location {location!r} makes an invalid reference for {ref}: {e}") from None


def registry_for(ref) -> tuple[Path | None, dict | None]:
    """The [[registry]] table that applies to `ref` (longest prefix), and its file."""
    path, tables = _load()
    best = None
    for t in tables:
        prefix = t.get("prefix") or t["location"]
        if _matches(prefix, ref.name) and (best is None or len(prefix) > len(best.get("prefix") or best["location"])):
            best = t
    return path, best


def check_not_blocked(ref, found: tuple | None = None) -> None:
    """RegistryError when registries.conf blocks the registry of `ref` (`found`: registry_for's answer)."""
    path, t = found or registry_for(ref)
    if t is not None and t.get("blocked"):
        raise RegistryError(f"registry {t.get('prefix') or t['location']} is blocked in {path}: {ref} is refused",
                            code="BLOCKED")


def endpoints(ref) -> list[Endpoint]:
    """Where to pull `ref` from, in order (see the module docstring); RegistryError when blocked."""
    path, t = found = registry_for(ref)
    check_not_blocked(ref, found)
    if t is None:
        legacy = (settings.registries_config().get("mirrors") or {}).get(ref.domain) or []
        return [Endpoint(ref, False, True, url=m) for m in legacy] + [Endpoint(ref)]
    prefix = t.get("prefix") or t["location"]
    policy = t.get("pull-from-mirror", "all")
    out = []
    if policy == "all" or (policy == "digest-only") == bool(ref.digest):
        for m in t.get("mirror") or []:
            out.append(Endpoint(_rewrite(ref, prefix, m["location"], str(path)), bool(m.get("insecure")), True))
    out.append(Endpoint(_rewrite(ref, prefix, t.get("location") or prefix, str(path)), bool(t.get("insecure"))))
    return out

