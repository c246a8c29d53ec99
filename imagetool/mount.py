"""The one description of a mount that crosses a module boundary (containerd's `mount.Mount`).

`unpack` produces the container's root filesystem as a `Mount`; the runtime performs it (by file
descriptor, inside the container's mount namespace); `--explain` and `--script` print it. This
module performs nothing itself: no syscalls, no imports beyond the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, eq=False, repr=False, init=False)
class Mount:
    """`mount -t TYPE -o OPTIONS SOURCE TARGET`, as a value.

    `type`: "overlay", "bind", "proc", "tmpfs", …; `options`: mount(8)-style words ("ro",
    "rbind", "lowerdir=l/1:l/0", …). `cwd`: the directory relative paths in `options` resolve
    against (overlay's short `l/<n>` lowerdirs keep the mount data inside one page), or None.
    Equal (and hashed alike) when all five fields are; __init__, __eq__, __hash__ and __repr__ are
    written out as dataclass would generate them (generated ones are compiled at every `run`).
    """

    type: str
    source: str
    target: str
    options: tuple[str, ...] = ()
    cwd: str | None = None

    def __init__(self, type: str, source: str, target: str, options: tuple[str, ...] = (),
                 cwd: str | None = None) -> None:
        _set = object.__setattr__   # frozen: as the generated __init__ does
        _set(self, "type", type)
        _set(self, "source", source)
        _set(self, "target", target)
        _set(self, "options", options)
        _set(self, "cwd", cwd)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return ((self.type, self.source, self.target, self.options, self.cwd)
                    == (other.type, other.source, other.target, other.options, other.cwd))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.type, self.source, self.target, self.options, self.cwd))

    def __repr__(self) -> str:
        return (f"Mount(type={self.type!r}, source={self.source!r}, target={self.target!r}, "
                f"options={self.options!r}, cwd={self.cwd!r})")

    def option(self, key: str) -> str | None:
        """The value of a `key=value` option (None when absent)."""
        prefix = key + "="
        return next((o[len(prefix):] for o in self.options if o.startswith(prefix)), None)

    def to_dict(self) -> dict:
        return {"type": self.type, "source": self.source, "target": self.target,
                "options": list(self.options), "cwd": self.cwd}

    @classmethod
    def from_dict(cls, d: dict) -> "Mount":
        return cls(d["type"], d["source"], d["target"], tuple(d.get("options") or ()), d.get("cwd"))
