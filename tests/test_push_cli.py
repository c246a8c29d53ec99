"""`imagetool push` through the command line against the real docker-registry on loopback: the
image arrives with its digest unchanged (pulled back into an empty store), docker's closing line,
`-q`, and an image missing from the store as one error line."""

from __future__ import annotations

import json
import re


def test_push_then_pull_back_gives_the_same_digest(cli, registry, tmp_path):
    from fixtures.images import busybox_archive

    archive = tmp_path / "bb.tar"
    archive.write_bytes(busybox_archive())
    cli("load", "-i", str(archive), check=True)
    dest = f"{registry.host}/cli/push:v1"

    r = cli("push", "busybox", dest, check=True)
    assert re.fullmatch(rf"{re.escape(dest)}: digest: (sha256:[0-9a-f]{{64}}) size: \d+\n", r.stdout), r.stdout
    digest = r.stdout.split()[2]
    rows = json.loads(cli("images", "--format", "json", check=True).stdout)
    assert digest == next(row["digest"] for row in rows if row["repository"] == "busybox")

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
