"""`imagetool push`, `copy`, `commit` and `history` through the command line: pushed to the real
docker-registry on loopback, an image keeps its digest (pulled back into an empty store); store → OCI
layout → store keeps it too; a committed container's file is in the new image and its history row
leads its base image's; docker's closing lines, `-q`, and bad input as one error line."""

from __future__ import annotations

import json
import re

import pytest


def load_busybox(cli, tmp_path) -> None:
    from fixtures.images import busybox_archive

    archive = tmp_path / "bb.tar"
    archive.write_bytes(busybox_archive())
    cli("load", "-i", str(archive), check=True)


def store_digest(cli, repository: str) -> str:
    rows = json.loads(cli("images", "--format", "json", check=True).stdout)
    return next(row["digest"] for row in rows if row["repository"] == repository)


def test_push_then_pull_back_gives_the_same_digest(cli, registry, tmp_path):
    load_busybox(cli, tmp_path)
    dest = f"{registry.host}/cli/push:v1"

    r = cli("push", "busybox", dest, check=True)
    assert re.fullmatch(rf"{re.escape(dest)}: digest: (sha256:[0-9a-f]{{64}}) size: \d+\n", r.stdout), r.stdout
    digest = r.stdout.split()[2]
    assert digest == store_digest(cli, "busybox")

    again = cli("push", "-q", "busybox", dest, check=True)
    assert again.stdout == digest + "\n"

    from conftest import Cli

    other = tmp_path / "other-store"
    other.mkdir()
    pulled = Cli(other, tmp_path)("pull", "-q", dest, check=True)
    assert pulled.stdout.strip() == digest


def test_push_of_an_image_not_in_the_store_is_one_error_line(cli, registry):
    r = cli("push", "nosuch", f"{registry.host}/cli/none:v1")
    assert r.returncode == 1
    assert r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr


def test_copy_store_to_layout_and_back_keeps_the_digest(cli, tmp_path):
    load_busybox(cli, tmp_path)
    digest = store_digest(cli, "busybox")
    layout = tmp_path / "layout"

    r = cli("copy", "store:busybox", f"oci:{layout}:bb", check=True)
    assert r.stdout == f"oci:{layout}:bb: digest: {digest}\n"
    assert (layout / "index.json").is_file()
    r = cli("copy", "-q", f"oci:{layout}:bb", "store:localhost/copied:v1", check=True)
    assert r.stdout == digest + "\n"
    assert store_digest(cli, "localhost/copied") == digest


@pytest.mark.parametrize("args", [("copy", "nowhere", "oci:{tmp}/never"), ("copy", "store:nosuch", "oci:{tmp}/never")])
def test_copy_with_a_bad_address_or_image_is_one_error_line(cli, args, tmp_path):
    r = cli(*(a.format(tmp=tmp_path) for a in args))
    assert r.returncode == 1
    assert r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr
    assert not (tmp_path / "never").exists()


def test_commit_makes_an_image_holding_the_container_changes_and_history_shows_it(cli, tmp_path):
    from runhelpers import kernel_skip_reason

    if kernel_skip_reason():
        pytest.skip(kernel_skip_reason())
    load_busybox(cli, tmp_path)
    cli("run", "--name", "c1", "busybox", "sh", "-c", "echo committed > /hello", check=True)
    r = cli("commit", "-m", "say hello", "-c", "CMD cat /hello", "c1", "localhost/committed:v1", check=True)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", r.stdout), r.stdout
    assert store_digest(cli, "localhost/committed") == r.stdout.strip()
    assert cli("run", "--rm", "localhost/committed:v1", check=True).stdout == "committed\n"
    rows = json.loads(cli("history", "--format", "json", "localhost/committed:v1", check=True).stdout)
    assert rows[0]["created_by"] == "imagetool commit" and rows[0]["comment"] == "say hello"
    assert rows[0]["size"] > 0 and rows[0]["layer"].startswith("sha256:")
    assert rows[1:] == json.loads(cli("history", "--format", "json", "busybox", check=True).stdout)
    table = cli("history", "localhost/committed:v1", check=True).stdout.splitlines()
    assert table[0].split()[:2] == ["LAYER", "CREATED"] and "say hello" in table[1]
    cli("rm", "c1", check=True)


def test_commit_of_no_such_container_is_one_error_line(cli):
    r = cli("commit", "nosuch", "localhost/x:v1")
    assert r.returncode == 1 and r.stderr.startswith("imagetool: error: ") and "Traceback" not in r.stderr
