"""The body of every command, free of any CLI library: call one service function, print, return the exit code.

Both entries call `serve`: the fast parser (fastcli.py) and the typer app (cli.py), each with the
keyword arguments options.py declares for the command. A body receives `store`, a function that
opens the content store on first call, then those keywords. Services are imported inside each body
so a command loads only what it uses.
"""

from __future__ import annotations

import sys


def serve(name: str, values: dict, store_arg: str | None = None, debug: bool = False) -> int:
    """Run command `name` with `values` and return its exit code; errors become one line on stderr
    and their exit code (errors.report; 125 under run). With `debug` an error propagates instead."""
    opened = []

    def store():
        if not opened:
            from store import Store

            from imagetool import settings

            opened.append(Store.open(settings.store_root(store_arg)))
        return opened[0]

    try:
        if _not_root():   # rootless: store-writing commands go on in a user namespace (root never loads userns)
            from imagetool import userns

            userns.enter_if_needed(name)
        rc = BODIES[name](store, **values)
    except KeyboardInterrupt:
        rc = 130
    except BrokenPipeError as e:
        rc = _stdout_gone() if _stdout_reader_left() else _report(e, name, debug)
    except Exception as e:
        rc = _report(e, name, debug)
    return rc or 0


def _not_root() -> bool:
    import os

    return os.geteuid() != 0


def _report(e: Exception, name: str, debug: bool) -> int:
    if debug:
        raise e
    from imagetool.errors import report

    return report(e, in_run=name == "run")


def flush_stdout(rc: int) -> int:
    """Flush stdout and return `rc`, or 141 when its reader has gone (`imagetool images | head -1`)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_gone()
    return rc


def _stdout_reader_left() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports POLLERR on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _stdout_gone() -> int:
    """End quietly, as a command killed by SIGPIPE does in a pipeline (exit 128 + 13): what is still
    buffered for stdout goes to /dev/null instead of failing again at exit."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def _usage(message: str):
    from imagetool.errors import ImagetoolError

    return ImagetoolError(message)


def _print_table(rows) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _trim(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_json(doc) -> None:
    import json

    print(json.dumps(doc, indent=2))


def _refuse_terminal(output: str | None) -> None:
    if output is None and sys.stdout.isatty():
        raise _usage("refusing to write an archive to a terminal: use -o FILE or redirect stdout")


# ---------------------------------------------------------------- images


def images(store, fmt: str) -> None:
    from imagetool import images as svc

    if fmt not in ("table", "json"):
        raise _usage(f"unknown format {fmt!r} (use table or json)")
    rows = svc.list_images(store())
    if fmt == "json":
        return _print_json([r.to_dict() for r in rows])
    table = [("REPOSITORY", "TAG", "DIGEST", "SIZE")]
    table += [(r.repository, r.tag or "<none>", r.digest[:19], svc.human_size(r.size)) for r in rows]
    _print_table(table)


def info(store, fmt: str) -> None:
    from imagetool import info as svc

    if fmt not in ("table", "json"):
        raise _usage(f"unknown format {fmt!r} (use table or json)")
    facts = svc.gather(store().root)
    if fmt == "json":
        return _print_json(facts.to_dict())
    for line in facts.lines():
        print(line)


def inspect(store, ref: str) -> None:
    from imagetool import containerstates
    from imagetool.errors import ImagetoolError

    try:   # a container of that id or name first (as docker), else an image
        containerstates.find(store(), ref)
    except ImagetoolError:
        from imagetool import images as svc

        return _print_json(svc.inspect(store(), ref))
    from imagetool import control

    _print_json([control.inspect(store(), ref)])


def tag(store, src: str, dst: str) -> None:
    from imagetool import images as svc

    svc.tag(store(), src, dst)


def rmi(store, refs: list) -> None:
    from imagetool import images as svc

    for ref in refs:
        print(f"Untagged: {svc.remove(store(), ref)}")


def prune(store) -> None:
    from imagetool import prune as svc

    for line in svc.prune(store()).lines():
        print(line)


# ---------------------------------------------------------------- registry


def pull(store, ref: str, platform: str | None, quiet: bool, max_concurrent: int, insecure: bool,
         no_unpack: bool = False) -> None:
    from imagetool.progress import make_reporter
    from imagetool.pull import pull as svc_pull

    with make_reporter(quiet=quiet) as progress:
        result = svc_pull(store(), ref, platform=platform, max_concurrent=max_concurrent, progress=progress,
                          insecure=insecure, unpack=not no_unpack)
    for line in pull_lines(result, quiet):
        print(line)
    mirror = served_by_mirror(result)
    if mirror and not quiet:
        print(f"Pulled from the mirror {mirror}", file=sys.stderr)


def served_by_mirror(result) -> str | None:
    """The mirror that served a pull (registries.conf), or None when the registry itself did."""
    from imagetool.reference import parse

    if not result.served_by or result.served_by == parse(result.name).registry_host:
        return None
    return result.served_by


def pull_lines(result, quiet: bool) -> list[str]:
    """What `pull` prints on stdout (like docker pull): the digest only with -q."""
    if quiet:
        return [result.digest]
    return [f"Digest: {result.digest}", f"Status: {result.status} for {result.name}", result.name]


def push(store, ref: str, dest: str | None, all_tags: bool, format: str | None, quiet: bool, insecure: bool) -> None:
    from imagetool.progress import make_reporter
    from imagetool.push import push as svc_push

    with make_reporter(quiet=quiet) as progress:
        results = svc_push(store(), ref, dest, all_tags=all_tags, format=format, progress=progress,
                           insecure=insecure)
    for r in results:  # docker's closing line per tag
        print(r.digest if quiet else f"{r.name}: digest: {r.digest} size: {r.size}")


def copy(store, src: str, dest: str, all_platforms: bool, platform: str | None, format: str | None, quiet: bool,
         insecure: bool) -> None:
    from imagetool.progress import make_reporter
    from imagetool.transfer import copy as svc_copy

    with make_reporter(quiet=quiet) as progress:
        result = svc_copy(store(), src, dest, all_platforms=all_platforms, platform=platform, progress=progress,
                          insecure=insecure, format=format)
    print(result.digest if quiet else f"{result.destination}: digest: {result.digest}")


def commit(store, container: str, image: str | None, changes: list, message: str | None,
           author: str | None) -> None:
    from imagetool.commit import commit as svc_commit

    print(svc_commit(store(), container, image, changes=changes, message=message, author=author).digest)


def history(store, ref: str, no_trunc: bool, fmt: str) -> None:
    import dataclasses

    from imagetool.commit import history as svc_history
    from imagetool.images import human_size

    if fmt not in ("table", "json"):
        raise _usage(f"unknown format {fmt!r} (use table or json)")
    rows = svc_history(store(), ref)
    if fmt == "json":
        return _print_json([dataclasses.asdict(r) for r in rows])
    table = [("LAYER", "CREATED", "CREATED BY", "SIZE", "COMMENT")]
    for r in rows:
        layer, by = r.layer or "<none>", r.created_by
        if not no_trunc:
            layer, by = layer[:19], _trim(by, 45)
        table.append((layer, r.created[:19] or "<unknown>", by, human_size(r.size), r.comment))
    _print_table(table)


def login(store, registry: str, username: str | None, password: str | None, password_stdin: bool,
          insecure: bool) -> None:
    from imagetool.registry import auth

    if password_stdin:
        password = sys.stdin.read().rstrip("\n")
    if username is None:
        username = input("Username: ")
    if password is None:
        import getpass

        password = getpass.getpass("Password: ")
    auth.login(registry, username, password, insecure=insecure)
    print("Login Succeeded")


def logout(store, registry: str) -> None:
    from imagetool.registry import auth

    if auth.logout(registry):
        print(f"Removing login credentials for {registry}")
    else:
        print(f"Not logged in to {registry}")


# ---------------------------------------------------------------- unpack, containers


def unpack(store, ref: str, dest: str, bundle: bool) -> None:
    from imagetool.bundle import unpack_image

    unpack_image(store(), ref, dest, bundle=bundle)


def run(store, **values) -> int:
    from imagetool.containers import RunOptions, run as svc_run

    opts = RunOptions(**values)
    if opts.detach:
        from imagetool.monitor import detach

        print(detach(store(), opts))
        return 0
    return svc_run(store(), opts)


def ps(store, all_: bool, fmt: str) -> None:
    from imagetool import containerstates
    from imagetool.errors import printable

    if fmt not in ("table", "json"):
        raise _usage(f"unknown format {fmt!r} (use table or json)")
    rows = containerstates.list_containers(store(), all_, _reconcile)
    if fmt == "json":
        return _print_json([r.to_dict() for r in rows])
    table = [("CONTAINER ID", "NAME", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS")]
    table += [(r.id[:12], r.name, r.image, _trim(printable(r.command), 30), r.created_ago, r.status_text, r.ports)
              for r in rows]   # the command is image content: no raw escape sequences on the terminal
    _print_table(table)


def _reconcile(cdir, state: dict):
    """containers.reconcile, loaded only when ps meets a container whose imagetool died."""
    from imagetool import containers

    return containers.reconcile(cdir, state)


def rm(store, containers: list, force: bool) -> None:
    from imagetool import containers as svc

    for c in containers:
        print(svc.remove(store(), c, force=force))


def logs(store, container: str, follow: bool, tail: int | None, timestamps: bool, since: str | None) -> None:
    from imagetool import control

    control.logs(store(), container, follow=follow, tail=tail, timestamps=timestamps, since=since)


def stop(store, containers: list, time: int | None) -> None:
    from imagetool import control

    for c in containers:
        print(control.stop(store(), c, timeout=time))


def kill(store, containers: list, signal: str) -> None:
    from imagetool import control

    for c in containers:
        print(control.kill(store(), c, signal))


def exec_(store, container: str, command: list, interactive: bool, tty: bool, detach: bool, env: list,
          user: str | None, workdir: str | None) -> int:
    from imagetool import control

    return control.exec_(store(), container, command, env=env, user=user, workdir=workdir, interactive=interactive,
                         tty=tty, detach=detach)


def start(store, containers: list, attach: bool, interactive: bool, detach_keys: str | None) -> int | None:
    from imagetool import control

    if (attach or interactive) and len(containers) != 1:
        raise _usage("start -a takes one container")
    if attach or interactive:
        from imagetool import attach as attaching

        return attaching.start_attached(store(), containers[0], stdin=interactive, detach_keys=detach_keys)
    for c in containers:
        control.start(store(), c)
        print(c)


def restart(store, containers: list, time: int | None) -> None:
    from imagetool import control

    for c in containers:
        control.stop(store(), c, timeout=time)
        control.start(store(), c)
        print(c)


def wait(store, containers: list) -> None:
    from imagetool import control

    for c in containers:
        print(control.wait(store(), c), flush=True)


def attach(store, container: str, no_stdin: bool, sig_proxy: str, detach_keys: str | None) -> int:
    from imagetool import attach as svc

    if sig_proxy.lower() not in ("true", "false", "1", "0"):
        raise _usage(f"invalid --sig-proxy {sig_proxy!r} (use true or false)")
    return svc.attach(store(), container, stdin=not no_stdin, sig_proxy=sig_proxy.lower() in ("true", "1"),
                      detach_keys=detach_keys)


# ---------------------------------------------------------------- networks


def port(store, container: str) -> None:
    from imagetool import containers
    from imagetool.network import attach

    for line in attach.port_lines(containers.find(store(), container)[0]):
        print(line)


def network(store, action: str, names: list, subnet: str | None, gateway: str | None, fmt: str) -> None:
    from imagetool.network import networks as service

    if fmt not in ("table", "json"):
        raise _usage(f"unknown format {fmt!r} (use table or json)")
    if action not in ("create", "ls", "inspect", "rm"):
        raise _usage(f"unknown network command {action!r} (create, ls, inspect or rm)")
    st = store()
    if action == "create":
        if len(names) != 1:
            raise _usage("network create takes one NAME")
        return print(service.create(st, names[0], subnet, gateway).name)
    if action == "ls":
        rows = service.list_networks(st)
        if fmt == "json":
            return _print_json([n.to_dict() for n in rows])
        return _print_table([("NAME", "DRIVER", "SUBNET", "GATEWAY")] +
                            [(n.name, "bridge", n.subnet, n.gateway) for n in rows])
    if not names:
        raise _usage(f"network {action} takes NAME...")
    if action == "inspect":
        return _print_json([service.inspect(st, n) for n in names])
    for n in names:
        print(service.remove(st, n))


# ---------------------------------------------------------------- archives


def load(store, input_: str | None) -> None:
    from imagetool import archive as svc

    if input_ is None:
        if sys.stdin.isatty():
            raise _usage("no input: use -i FILE or pipe an archive on stdin")
        input_ = "-"
    for line in svc.load(store(), input_):
        print(line)


def save(store, refs: list, output: str | None, fmt: str) -> None:
    from imagetool import archive as svc

    _refuse_terminal(output)
    svc.save(store(), refs, output or "-", fmt=fmt)


def import_(store, source: str, name: str) -> None:
    from imagetool import archive as svc

    print(svc.import_(store(), source, name))


def export(store, target: str, output: str | None) -> None:
    from imagetool import archive as svc, containers
    from imagetool.errors import ImagetoolError

    _refuse_terminal(output)
    st = store()
    try:  # a container of that id or name, else an image
        cdir = containers.find(st, target)[0]
    except ImagetoolError:
        cdir = None
    svc.export(st, target, output or "-", container_dir=cdir)


BODIES = {"images": images, "info": info, "inspect": inspect, "tag": tag, "rmi": rmi, "prune": prune, "pull": pull,
          "push": push, "copy": copy, "login": login, "logout": logout, "unpack": unpack, "run": run, "ps": ps,
          "rm": rm, "logs": logs, "stop": stop, "kill": kill, "wait": wait, "attach": attach, "exec": exec_, "start": start,
          "restart": restart, "commit": commit, "history": history, "load": load, "save": save, "import": import_,
          "export": export, "port": port, "network": network}
"""Command name → body; options.COMMANDS declares each one's keywords."""
