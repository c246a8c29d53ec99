"""The CNI protocol: run a network's plugin chain as libcni does, and cache what DEL needs.

A network is a conflist (cniVersion, name, plugins). ADD runs the plugins in order, each one
with its config on stdin (name and cniVersion of the list, `prevResult` = the previous plugin's
result, `runtimeConfig` = the capabilities it declares), and the environment CNI_COMMAND,
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH. DEL runs them in reverse with the cached
result as prevResult and tolerates what is already gone; CHECK re-validates an ADD. A plugin's
failure is its JSON error (code, msg, details) on stdout with a non-zero exit: it becomes one
NetworkError line naming the plugin.

The plugins are found in $IMAGETOOL_CNI_PATH (a colon list), else /usr/lib/cni (Debian's
containernetworking-plugins), else /opt/cni/bin.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field

from imagetool.errors import NetworkError

CNI_VERSION = "1.0.0"
SEARCH_PATH = ("/usr/lib/cni", "/opt/cni/bin")
PACKAGE = "containernetworking-plugins"
_TIMEOUT = 60


@dataclass(frozen=True, slots=True)
class Attachment:
    """One network attached to one container: what ADD was given, enough for DEL after a crash."""

    container_id: str
    netns: str                              # path of the namespace file (CNI_NETNS)
    ifname: str                             # CNI_IFNAME
    conflist: dict                          # the network's config list
    runtime_config: dict = field(default_factory=dict)   # portMappings, ips …
    result: dict | None = None              # the last plugin's ADD result (None: ADD unfinished)

    def to_json(self) -> dict:
        return {"container_id": self.container_id, "netns": self.netns, "ifname": self.ifname,
                "conflist": self.conflist, "runtime_config": self.runtime_config, "result": self.result}

    @classmethod
    def from_json(cls, doc: dict) -> "Attachment":
        return cls(doc["container_id"], doc["netns"], doc["ifname"], doc["conflist"],
                   doc.get("runtime_config") or {}, doc.get("result"))


def plugin_path() -> list[str]:
    env = os.environ.get("IMAGETOOL_CNI_PATH")
    return [p for p in env.split(":") if p] if env is not None else list(SEARCH_PATH)


def find_plugin(name: str) -> str:
    """The plugin binary `name`, or a NetworkError naming the package to install."""
    if not name or "/" in name or name.startswith("."):
        raise NetworkError(f"invalid CNI plugin type {name!r}")
    for d in plugin_path():
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    raise NetworkError(f"the CNI plugin {name!r} is missing (searched {':'.join(plugin_path())})",
                       hint=f"install the package {PACKAGE} (apt-get install {PACKAGE})")


def require(names) -> None:
    """Fail early, before anything is made, when a plugin of the chain is missing."""
    for n in names:
        find_plugin(n)


def plugin_config(conflist: dict, plugin: dict, prev: dict | None, runtime_config: dict) -> dict:
    """The config one plugin reads on stdin (libcni's buildOneConfig)."""
    conf = dict(plugin)
    conf["cniVersion"] = conflist.get("cniVersion", CNI_VERSION)
    conf["name"] = conflist["name"]
    caps = plugin.get("capabilities") or {}
    rc = {k: v for k, v in runtime_config.items() if caps.get(k)}
    if rc:
        conf["runtimeConfig"] = rc
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def shell_line(path: str, conf: dict, env: dict) -> str:
    """The plugin call as a person would type it (for --explain)."""
    import shlex

    return (f"echo {shlex.quote(json.dumps(conf, separators=(',', ':')))} | "
            + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items() if k != "PATH") + f" {shlex.quote(path)}")


def invoke(command: str, plugin: dict, conf: dict, att: Attachment, trace=None) -> dict | None:
    """Run one plugin; its JSON result (ADD), or None (CHECK, DEL). `trace(step, line, started)`
    is told each call once it returned (its name, the shell line, its perf_counter start), for
    --explain."""
    import time

    path = find_plugin(plugin.get("type", ""))
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": att.container_id, "CNI_NETNS": att.netns,
           "CNI_IFNAME": att.ifname, "CNI_PATH": ":".join(plugin_path()),
           "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    started = time.perf_counter()
    try:
        p = subprocess.run([path], input=json.dumps(conf).encode(), env=env, capture_output=True,
                           timeout=_TIMEOUT, close_fds=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetworkError(f"CNI plugin {plugin['type']} ({command}) failed to run: {e}") from None
    if trace is not None:
        trace(f"cni {command} {plugin['type']} ({att.ifname})", shell_line(path, conf, env), started)
    if p.returncode != 0:
        raise NetworkError(f"CNI plugin {plugin['type']} ({command}) failed: {_error_text(p)}")
    if command != "ADD":
        return None
    try:
        result = json.loads(p.stdout)
    except ValueError:
        raise NetworkError(f"CNI plugin {plugin['type']} (ADD) printed no JSON result") from None
    if not isinstance(result, dict):
        raise NetworkError(f"CNI plugin {plugin['type']} (ADD) printed no JSON result")
    return result


def _error_text(p: subprocess.CompletedProcess) -> str:
    try:
        err = json.loads(p.stdout)
        text = err.get("msg") or ""
        if err.get("details"):
            text += f": {err['details']}"
        return " ".join(text.split()) or f"exit status {p.returncode}"
    except (ValueError, AttributeError):
        text = (p.stderr or p.stdout or b"").decode(errors="replace").strip().splitlines()
        return text[-1] if text else f"exit status {p.returncode}"


def add(att: Attachment, save=None, trace=None) -> Attachment:
    """ADD through the chain; `save(att)` is called before the first plugin runs (so a crash
    mid-ADD still leaves what DEL needs) and with the final result. Returns the attachment
    with its result. A failing plugin undoes the chain (DEL) before the error propagates."""
    plugins = att.conflist["plugins"]
    require(p.get("type", "") for p in plugins)
    if save is not None:
        save(att)
    prev = None
    try:
        for plugin in plugins:
            prev = invoke("ADD", plugin, plugin_config(att.conflist, plugin, prev, att.runtime_config), att, trace)
    except BaseException:
        try:
            delete(att, trace=None)
        except NetworkError:
            pass
        raise
    done = Attachment(att.container_id, att.netns, att.ifname, att.conflist, att.runtime_config, prev)
    if save is not None:
        save(done)
    return done


def check(att: Attachment) -> None:
    """CHECK through the chain (needs the cached result); a NetworkError if a plugin objects."""
    if att.result is None:
        raise NetworkError(f"network {att.conflist['name']}: nothing to check (ADD did not finish)")
    for plugin in att.conflist["plugins"]:
        invoke("CHECK", plugin, plugin_config(att.conflist, plugin, att.result, att.runtime_config), att)


def delete(att: Attachment, trace=None) -> None:
    """DEL in reverse order with the cached result (None after an unfinished ADD). Every plugin
    runs even when one fails; the first failure is raised at the end."""
    first = None
    for plugin in reversed(att.conflist["plugins"]):
        try:
            invoke("DEL", plugin, plugin_config(att.conflist, plugin, att.result, att.runtime_config), att, trace)
        except NetworkError as e:
            first = first or e
    if first is not None:
        raise first
