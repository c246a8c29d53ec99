"""imagetool: a daemonless container toolchain (pull, store, unpack, run, load, save)."""

__version__ = "0.1.0"
