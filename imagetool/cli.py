"""The command line: parse options, call one service function, print, map errors to exit codes.

Imports of services (and of zstandard, tqdm) happen inside each command so that `imagetool --help`
and `imagetool images` start fast. The console script enters through `imagetool.__main__`, which
serves the common forms of `run` and `pull` without loading typer at all (see fastcli.py).
"""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="A daemonless container toolchain: pull, store, unpack, run, load and save OCI images.",
    context_settings={"help_option_names": ["--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class _Globals:
    store: Optional[str] = None
    debug: bool = False
    command: Optional[str] = None


G = _Globals()


def _version(value: bool) -> None:
    if value:
        from imagetool import __version__

        typer.echo(f"imagetool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    store: Optional[str] = typer.Option(None, "--store", envvar="IMAGETOOL_STORE", metavar="DIR",
                                        help="Store directory (default /var/lib/imagetool for root)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    G.store = store
    G.debug = debug


def open_store():
    """The content store selected by --store / IMAGETOOL_STORE / the default."""
    from store import Store

    from imagetool import settings

    return Store.open(settings.store_root(G.store))


# ---------------------------------------------------------------- images, inspect, tag, rmi, prune


@app.command()
def images(fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """List images in the store."""
    from imagetool import images as svc

    rows = svc.list_images(open_store())
    if fmt == "json":
        import json

        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    if fmt != "table":
        raise _usage(f"unknown format {fmt!r} (use table or json)")
    table = [("REPOSITORY", "TAG", "DIGEST", "SIZE")]
    table += [(r.repository, r.tag or "<none>", r.digest[:19], svc.human_size(r.size)) for r in rows]
    _print_table(table)


@app.command()
def inspect(ref: str = typer.Argument(..., metavar="REF")) -> None:
    """Show an image's manifest, config and layers as JSON."""
    import json

    from imagetool import images as svc

    typer.echo(json.dumps(svc.inspect(open_store(), ref), indent=2))


@app.command()
def tag(src: str = typer.Argument(..., metavar="SRC"), dst: str = typer.Argument(..., metavar="DST")) -> None:
    """Give an image another name."""
    from imagetool import images as svc

    svc.tag(open_store(), src, dst)


@app.command()
def rmi(refs: List[str] = typer.Argument(..., metavar="REF...")) -> None:
    """Remove image names (blobs go at the next `prune`)."""
    from imagetool import images as svc

    st = open_store()
    for ref in refs:
        typer.echo(f"Untagged: {svc.remove(st, ref)}")


@app.command()
def prune() -> None:
    """Remove exited containers and unreferenced blobs, snapshots and stale downloads."""
    from imagetool import images as svc

    report = svc.prune(open_store())
    for line in report.lines():
        typer.echo(line)


# ---------------------------------------------------------------- registry


@app.command()
def pull(
    ref: str = typer.Argument(..., metavar="REF"),
    platform: Optional[str] = typer.Option(None, "--platform", help="os/arch[/variant]"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only the resolved digest."),
    max_concurrent: int = typer.Option(3, "--max-concurrent-downloads", min=1),
    insecure: bool = typer.Option(False, "--insecure", help="Allow plain HTTP / unverified TLS."),
) -> None:
    """Pull an image from a registry into the store."""
    from imagetool import pull as svc
    from imagetool.progress import make_reporter

    with make_reporter(quiet=quiet) as progress:
        result = svc.pull(open_store(), ref, platform=platform, max_concurrent=max_concurrent,
                          progress=progress, insecure=insecure)
    from imagetool.fastcli import pull_lines

    for line in pull_lines(result, quiet):
        typer.echo(line)


@app.command()
def login(
    registry: str = typer.Argument("docker.io", metavar="REGISTRY"),
    username: Optional[str] = typer.Option(None, "-u", "--username"),
    password: Optional[str] = typer.Option(None, "-p", "--password"),
    password_stdin: bool = typer.Option(False, "--password-stdin"),
    insecure: bool = typer.Option(False, "--insecure"),
) -> None:
    """Store credentials for a registry (checked against it first)."""
    from imagetool.registry import auth

    if password_stdin:
        password = sys.stdin.read().rstrip("\n")
    if username is None:
        username = input("Username: ")
    if password is None:
        import getpass

        password = getpass.getpass("Password: ")
    auth.login(registry, username, password, insecure=insecure)
    typer.echo("Login Succeeded")


@app.command()
def logout(registry: str = typer.Argument("docker.io", metavar="REGISTRY")) -> None:
    """Remove stored credentials for a registry."""
    from imagetool.registry import auth

    if auth.logout(registry):
        typer.echo(f"Removing login credentials for {registry}")
    else:
        typer.echo(f"Not logged in to {registry}")


# ---------------------------------------------------------------- unpack


@app.command()
def unpack(
    ref: str = typer.Argument(..., metavar="REF"),
    dest: str = typer.Argument(..., metavar="DIR"),
    bundle: bool = typer.Option(False, "--bundle", help="Write DIR/rootfs and DIR/config.json."),
) -> None:
    """Unpack an image's flattened root filesystem (or an OCI bundle) into DIR."""
    from imagetool import unpack as svc

    svc.unpack_image(open_store(), ref, dest, bundle=bundle)


# ---------------------------------------------------------------- containers

_RUN_CONTEXT = {"allow_interspersed_args": False, "ignore_unknown_options": False}


@app.command(context_settings=_RUN_CONTEXT)
def run(
    image: str = typer.Argument(..., metavar="IMAGE"),
    command: Optional[List[str]] = typer.Argument(None, metavar="[COMMAND [ARG...]]"),
    rm: bool = typer.Option(False, "--rm", help="Remove the container when it exits."),
    name: Optional[str] = typer.Option(None, "--name"),
    env: Optional[List[str]] = typer.Option(None, "-e", "--env"),
    env_file: Optional[List[str]] = typer.Option(None, "--env-file"),
    workdir: Optional[str] = typer.Option(None, "-w", "--workdir"),
    user: Optional[str] = typer.Option(None, "-u", "--user"),
    entrypoint: Optional[str] = typer.Option(None, "--entrypoint"),
    hostname: Optional[str] = typer.Option(None, "-h", "--hostname"),
    volume: Optional[List[str]] = typer.Option(None, "-v", "--volume"),
    read_only: bool = typer.Option(False, "--read-only"),
    memory: Optional[str] = typer.Option(None, "-m", "--memory"),
    memory_swap: Optional[str] = typer.Option(None, "--memory-swap"),
    cpus: Optional[float] = typer.Option(None, "--cpus"),
    pids_limit: Optional[int] = typer.Option(None, "--pids-limit"),
    network: str = typer.Option("private", "--network", help="none | host (default: private, loopback only)"),
    interactive: bool = typer.Option(False, "-i", "--interactive"),
    tty: bool = typer.Option(False, "-t", "--tty"),
    runtime: Optional[str] = typer.Option(None, "--runtime", help="Hand the spec to runc or crun."),
    platform: Optional[str] = typer.Option(None, "--platform"),
    rootfs_mode: str = typer.Option("auto", "--rootfs", hidden=True, help="auto | overlay | copy"),
) -> None:
    """Run a command in a new container (pulls or loads the image when missing)."""
    from imagetool import containers as svc

    opts = svc.RunOptions(
        image=image, command=list(command or []), rm=rm, name=name, env=list(env or []),
        env_files=list(env_file or []), workdir=workdir, user=user, entrypoint=entrypoint,
        hostname=hostname, volumes=list(volume or []), read_only=read_only, memory=memory,
        memory_swap=memory_swap, cpus=cpus, pids_limit=pids_limit, network=network,
        interactive=interactive, tty=tty, runtime=runtime, platform=platform,
        rootfs_mode=rootfs_mode,
    )
    raise typer.Exit(svc.run(open_store(), opts))


@app.command()
def ps(all_: bool = typer.Option(False, "-a", "--all", help="Show exited containers too."),
       fmt: str = typer.Option("table", "--format", help="table or json.")) -> None:
    """List containers."""
    from imagetool import containers as svc

    rows = svc.list_containers(open_store(), all_=all_)
    if fmt == "json":
        import json

        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    table = [("CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS", "EXIT CODE")]
    table += [(r.id[:12], r.name, r.image, _trim(r.command, 30), r.status,
               "" if r.exit_code is None else str(r.exit_code)) for r in rows]
    _print_table(table)


@app.command("rm")
def rm_(containers: List[str] = typer.Argument(..., metavar="CONTAINER..."),
        force: bool = typer.Option(False, "-f", "--force", help="Kill a running container first.")) -> None:
    """Remove containers."""
    from imagetool import containers as svc

    st = open_store()
    for c in containers:
        typer.echo(svc.remove(st, c, force=force))


# ---------------------------------------------------------------- archives


@app.command()
def load(input_: Optional[str] = typer.Option(None, "-i", "--input", metavar="FILE",
                                               help="Archive or OCI layout directory ('-' = stdin).")) -> None:
    """Load images from a docker-archive, oci-archive or OCI layout."""
    from imagetool import archive as svc

    if input_ is None:
        if sys.stdin.isatty():
            raise _usage("no input: use -i FILE or pipe an archive on stdin")
        input_ = "-"
    for line in svc.load(open_store(), input_):
        typer.echo(line)


@app.command()
def save(
    refs: List[str] = typer.Argument(..., metavar="REF..."),
    output: Optional[str] = typer.Option(None, "-o", "--output", metavar="FILE"),
    fmt: str = typer.Option("docker", "--format", help="docker or oci."),
) -> None:
    """Save images to a tar archive (stdout when -o is absent and stdout is not a terminal)."""
    from imagetool import archive as svc

    if output is None and sys.stdout.isatty():
        raise _usage("refusing to write an archive to a terminal: use -o FILE or redirect stdout")
    svc.save(open_store(), refs, output or "-", fmt=fmt)


@app.command("import")
def import_(source: str = typer.Argument(..., metavar="FILE|DIR|-"),
            name: str = typer.Argument(..., metavar="NAME[:TAG]")) -> None:
    """Create a one-layer image from a root filesystem tarball or directory."""
    from imagetool import archive as svc

    typer.echo(svc.import_(open_store(), source, name))


@app.command()
def export(target: str = typer.Argument(..., metavar="CONTAINER|IMAGE"),
           output: Optional[str] = typer.Option(None, "-o", "--output", metavar="FILE")) -> None:
    """Write a container's or image's flattened filesystem as a tarball."""
    from imagetool import archive as svc

    if output is None and sys.stdout.isatty():
        raise _usage("refusing to write an archive to a terminal: use -o FILE or redirect stdout")
    svc.export(open_store(), target, output or "-")


# ---------------------------------------------------------------- helpers


def _usage(message: str):
    from imagetool.errors import ImagetoolError

    return ImagetoolError(message)


def _trim(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def main(argv: Optional[List[str]] = None) -> None:
    """Run the typer app and map exceptions to exit codes (errors.report); exits the process."""
    try:  # typer >= 0.2x vendors click as typer._click (the `click` package may be absent)
        from typer._click.exceptions import ClickException
    except ImportError:
        from click.exceptions import ClickException

    from imagetool.errors import report
    from imagetool.fastcli import command_of

    argv = sys.argv[1:] if argv is None else argv
    G.command = command_of(argv)  # so usage errors of `run` exit 125, like docker's
    try:
        rc = app(args=argv, standalone_mode=False, prog_name="imagetool")
    except typer.Exit as e:
        rc = e.exit_code
    except typer.Abort:
        sys.stderr.write("imagetool: aborted\n")
        rc = 130
    except ClickException as e:
        e.show()
        rc = 125 if G.command == "run" else 2
    except KeyboardInterrupt:
        rc = 130
    except Exception as e:
        if G.debug:
            raise
        rc = report(e, in_run=G.command == "run")
    sys.stdout.flush()
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # the full CLI only; `python -m imagetool` adds the fast path
    main()
