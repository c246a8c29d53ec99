"""Where imagetool keeps its own things: the store, credentials, CA files, registry settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

CONFIG_DIRS = (Path("/etc/imagetool"), Path("/etc/docker"), Path("/etc/containers"))


def store_root(explicit: str | None = None) -> Path:
    """--store, else $IMAGETOOL_STORE, else /var/lib/imagetool (root) or $XDG_DATA_HOME/imagetool."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("IMAGETOOL_STORE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        if "IMAGETOOL_USERNS" not in os.environ:   # set only in imagetool's own namespace (userns.ENV)
            return Path("/var/lib/imagetool")
        from imagetool import userns

        if not userns.inside():   # root of imagetool's user namespace is still the user: the user's store
            return Path("/var/lib/imagetool")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "imagetool"


def config_dir() -> Path:
    """imagetool's own configuration directory ($IMAGETOOL_CONFIG_DIR overrides, for tests)."""
    return Path(os.environ.get("IMAGETOOL_CONFIG_DIR", "/etc/imagetool"))


def certs_dirs(host: str) -> list[Path]:
    """certs.d/<host>/ directories to search for ca.crt (imagetool first, then docker, containers)."""
    bases = [config_dir()] + [d for d in CONFIG_DIRS if d != config_dir()]
    return [b / "certs.d" / host for b in bases]


def registries_config() -> dict:
    """/etc/imagetool/registries.json: {"insecure": [hosts], "mirrors": {"docker.io": ["https://…"]}}."""
    path = config_dir() / "registries.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        from imagetool.errors import ImagetoolError

        raise ImagetoolError(f"cannot read {path}: {e}") from None


def docker_config_path() -> Path:
    """~/.docker/config.json, or $DOCKER_CONFIG/config.json."""
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def auth_file() -> Path:
    """Where `imagetool login` writes: $REGISTRY_AUTH_FILE, else the docker config.json."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    return Path(env) if env else docker_config_path()
