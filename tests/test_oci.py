"""OCI/Docker manifest, index and config parsing; platform normalisation and selection; media types."""

from __future__ import annotations

import json

import pytest

from fixtures.images import Layer, build_image, build_index
from fixtures.tarbuild import file
from imagetool import mediatypes as mt
from imagetool import oci
from imagetool.errors import ImagetoolError, ManifestError
from store import Digest

DG = "sha256:" + "1" * 64
DG2 = "sha256:" + "2" * 64
DG3 = "sha256:" + "3" * 64
WHERE = Digest.parse("sha256:" + "f" * 64)


def js(doc) -> bytes:
    return json.dumps(doc).encode()


def desc(media_type=mt.OCI_LAYER_GZIP, digest=DG, size=10, **extra) -> dict:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def oci_manifest(**over) -> dict:
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
           "config": desc(mt.OCI_CONFIG, DG2, 100), "layers": [desc(), desc(mt.OCI_LAYER_ZSTD, DG3, 20)]}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def oci_index(**over) -> dict:
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": [
        desc(mt.OCI_MANIFEST, DG, 500, platform={"os": "linux", "architecture": "amd64"}),
        desc(mt.OCI_MANIFEST, DG2, 500, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
    ]}
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


# ---------------------------------------------------------------- valid documents


def test_oci_manifest_keeps_raw_bytes_and_parses_descriptors():
    raw = js(oci_manifest(annotations={"a": "b"}))
    m = oci.parse_manifest(raw, WHERE, mt.OCI_MANIFEST)
    assert isinstance(m, oci.Manifest)
    assert m.raw == raw and m.digest == WHERE and m.media_type == mt.OCI_MANIFEST
    assert m.config.digest == Digest.parse(DG2) and m.config.size == 100
    assert [str(la.digest) for la in m.layers] == [DG, DG3]
    assert [la.media_type for la in m.layers] == [mt.OCI_LAYER_GZIP, mt.OCI_LAYER_ZSTD]
    assert m.annotations == {"a": "b"}


def test_built_images_and_indexes_parse(busybox):
    m = oci.parse_manifest(busybox.manifest, busybox.manifest_digest, busybox.manifest_media_type)
    assert str(m.digest) == busybox.manifest_digest
    assert str(m.config.digest) == busybox.config_digest
    cfg = oci.parse_config(busybox.config_bytes, busybox.config_digest)
    assert cfg.cmd == ["sh"] and cfg.entrypoint is None
    assert [str(d) for d in cfg.diff_ids] == [la.diff_id for la in busybox.layers]
    assert any(e.startswith("PATH=") for e in cfg.env)


def test_docker_schema2_manifest_and_list():
    layer = Layer([file("x", b"x")])
    a = build_image([layer], docker=True)
    b = build_image([layer], docker=True, platform="linux/arm/v7")
    idx = build_index([a, b], docker=True)
    m = oci.parse_manifest(a.manifest, a.manifest_digest, mt.DOCKER_MANIFEST)
    assert m.media_type == mt.DOCKER_MANIFEST and m.layers[0].media_type == mt.DOCKER_LAYER
    i = oci.parse_manifest(idx.manifest, idx.manifest_digest, mt.DOCKER_MANIFEST_LIST)
    assert isinstance(i, oci.Index) and i.media_type == mt.DOCKER_MANIFEST_LIST
    assert [str(d.digest) for d in i.manifests] == [a.manifest_digest, b.manifest_digest]
    assert str(oci.select_platform(i, "linux/arm/v7").digest) == b.manifest_digest
    assert str(oci.select_platform(i, "linux/armhf").digest) == b.manifest_digest


@pytest.mark.parametrize("doc,content_type,kind,media_type", [
    (oci_manifest(mediaType=None), None, oci.Manifest, mt.OCI_MANIFEST),
    (oci_manifest(mediaType=None), mt.OCI_MANIFEST, oci.Manifest, mt.OCI_MANIFEST),
    (oci_manifest(mediaType=None), "application/json", oci.Manifest, mt.OCI_MANIFEST),
    (oci_manifest(mediaType=None), mt.DOCKER_MANIFEST, oci.Manifest, mt.DOCKER_MANIFEST),
    (oci_index(mediaType=None), None, oci.Index, mt.OCI_INDEX),
    (oci_index(mediaType=None), mt.OCI_INDEX + "; charset=utf-8", oci.Index, mt.OCI_INDEX),
    (oci_manifest(), mt.OCI_MANIFEST + "; charset=utf-8", oci.Manifest, mt.OCI_MANIFEST),
    (oci_manifest(), "Application/VND.OCI.Image.Manifest.v1+JSON", oci.Manifest, mt.OCI_MANIFEST),
    (oci_manifest(), "application/octet-stream", oci.Manifest, mt.OCI_MANIFEST),
    (oci_manifest(layers=[]), None, oci.Manifest, mt.OCI_MANIFEST),
    (oci_manifest(schemaVersion=None), None, oci.Manifest, mt.OCI_MANIFEST),
], ids=["infer-manifest", "ct-manifest", "generic-ct", "ct-docker", "infer-index", "ct-params-index",
        "ct-params", "ct-case", "octet-stream", "no-layers", "no-schemaVersion"])
def test_media_type_from_body_content_type_or_structure(doc, content_type, kind, media_type):
    parsed = oci.parse_manifest(js(doc), WHERE, content_type)
    assert isinstance(parsed, kind)
    assert parsed.media_type == media_type


def test_index_entries_keep_platform_and_annotations():
    doc = oci_index()
    doc["manifests"][0]["annotations"] = {"org.opencontainers.image.ref.name": "x"}
    idx = oci.parse_manifest(js(doc), WHERE, mt.OCI_INDEX)
    assert idx.manifests[0].annotations == {"org.opencontainers.image.ref.name": "x"}
    assert idx.manifests[1].platform == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    assert oci.available_platforms(idx) == ["linux/amd64", "linux/arm64/v8"]


# ---------------------------------------------------------------- refused documents

SCHEMA1 = {"schemaVersion": 1, "name": "library/busybox", "tag": "latest", "architecture": "amd64",
           "fsLayers": [{"blobSum": DG}], "history": [{"v1Compatibility": "{}"}]}


@pytest.mark.parametrize("doc,content_type", [
    (SCHEMA1, None),
    (SCHEMA1, mt.DOCKER_SCHEMA1),
    (SCHEMA1, mt.DOCKER_SCHEMA1_SIGNED),
    ({**SCHEMA1, "signatures": [{}]}, mt.DOCKER_SCHEMA1_SIGNED + "; charset=utf-8"),
    ({**SCHEMA1, "mediaType": mt.DOCKER_SCHEMA1}, "application/json"),
    (oci_manifest(), mt.DOCKER_SCHEMA1_SIGNED),   # the Content-Type alone is enough
], ids=["body-version", "ct-v1", "ct-prettyjws", "ct-params", "body-mediatype", "ct-only"])
def test_schema1_is_refused_with_a_clear_message(doc, content_type):
    with pytest.raises(ManifestError) as exc:
        oci.parse_manifest(js(doc), WHERE, content_type)
    assert "schema 1" in str(exc.value) and "not supported" in str(exc.value)
    assert exc.value.hint


BAD = [
    (b"not json", None, "not valid JSON"),
    (b"[1, 2]", None, "not a JSON object"),
    (b"", None, "not valid JSON"),
    (js(oci_manifest()), mt.OCI_INDEX, "contradicts the Content-Type"),
    (js(oci_manifest()), mt.DOCKER_MANIFEST, "contradicts the Content-Type"),
    (js(oci_index()), mt.OCI_MANIFEST + "; charset=utf-8", "contradicts the Content-Type"),
    (js(oci_manifest(mediaType="application/vnd.oci.artifact.manifest.v1+json")), None, "unsupported media type"),
    (js(oci_manifest(mediaType=None)), "application/vnd.example.thing+json", "unsupported media type"),
    (js(oci_manifest(mediaType=5)), None, "mediaType must be a string"),
    (js(oci_manifest(schemaVersion=3)), None, "schemaVersion"),
    (js({"schemaVersion": 2}), None, "neither an index nor a manifest"),
    (js({**oci_manifest(mediaType=None), "manifests": []}), None, "ambiguous"),
    (js(oci_manifest(config=None)), None, "no config"),
    (js(oci_manifest(config=desc(mt.OCI_CONFIG, "sha256:abc", 1))), None, "config"),
    (js(oci_manifest(layers=[desc(digest="md5:" + "a" * 32)])), None, "layers[0]"),
    (js(oci_manifest(layers=[desc(), desc(digest="sha256:" + "G" * 64)])), None, "layers[1]"),
    (js(oci_manifest(layers=[desc(digest="sha256:../../etc/passwd")])), None, "layers[0]"),
    (js(oci_manifest(layers=[desc(size=-1)])), None, "invalid size -1"),
    (js(oci_manifest(layers=[desc(size=1.5)])), None, "invalid size 1.5"),
    (js(oci_manifest(layers=[desc(size="10")])), None, "invalid size '10'"),
    (js(oci_manifest(layers=[desc(size=True)])), None, "invalid size True"),
    (js(oci_manifest(layers=[{"digest": DG, "size": 1}])), None, "has no mediaType"),
    (js(oci_manifest(layers=[desc(annotations={"a": 1})])), None, "annotations"),
    (js(oci_manifest(layers="nope")), None, "layers must be a list"),
    (js(oci_manifest(layers=[desc()] * (oci.MAX_LAYERS + 1))), None, "more than the limit"),
    (js(oci_manifest(annotations=["x"])), None, "annotations"),
    (js(oci_index(manifests={"a": 1})), None, "manifests must be a list"),
    (js(oci_index(manifests=[desc(mt.OCI_MANIFEST, size=-5)])), None, "manifests[0]"),
    (js(oci_index(manifests=[desc(mt.OCI_MANIFEST)] * (oci.MAX_INDEX_ENTRIES + 1))), None, "more than the limit"),
    (js({**oci_index(), "layers": []}), None, "must not have"),
    (js({**oci_manifest(), "manifests": []}), None, "must not have"),
]


@pytest.mark.parametrize("raw,content_type,fragment", BAD, ids=[f"bad{i}-{b[2][:20]}" for i, b in enumerate(BAD)])
def test_malformed_manifests_are_refused(raw, content_type, fragment):
    with pytest.raises(ManifestError) as exc:
        oci.parse_manifest(raw, WHERE, content_type)
    assert fragment in str(exc.value)
    assert str(WHERE) in str(exc.value)


@pytest.mark.parametrize("raw", [
    b'{"schemaVersion": 2, "mediaType": "%s", "config": %s, "layers": [], "Layers": %s}'
    % (mt.OCI_MANIFEST.encode(), js(desc(mt.OCI_CONFIG, DG2, 1)), js([desc()])),
    b'{"schemaVersion": 2, "schemaVersion": 1, "mediaType": "%s", "config": %s, "layers": []}'
    % (mt.OCI_MANIFEST.encode(), js(desc(mt.OCI_CONFIG, DG2, 1))),
    b'{"schemaVersion": 2, "mediaType": "%s", "config": {"mediaType": "%s", "digest": "%s", "Digest": "%s",'
    b' "size": 1}, "layers": []}' % (mt.OCI_MANIFEST.encode(), mt.OCI_CONFIG.encode(), DG.encode(), DG2.encode()),
], ids=["Layers-vs-layers", "duplicate-schemaVersion", "nested-Digest"])
def test_duplicate_keys_are_refused_to_avoid_parser_differentials(raw):
    """Go decoders match keys case-insensitively and keep the last duplicate: such a document
    could mean one image to a registry and another to us."""
    with pytest.raises(ManifestError, match="appears more than once"):
        oci.parse_manifest(raw, WHERE, mt.OCI_MANIFEST)


def test_labels_and_annotations_differing_in_case_are_distinct():
    m = oci.parse_manifest(js(oci_manifest(annotations={"Foo": "1", "foo": "2"})), WHERE)
    assert m.annotations == {"Foo": "1", "foo": "2"}
    c = oci.parse_config(js({"rootfs": {"type": "layers", "diff_ids": []},
                             "config": {"Labels": {"Version": "1", "version": "2"}}}), WHERE)
    assert c.labels == {"Version": "1", "version": "2"}
    with pytest.raises(ManifestError, match="appears more than once"):
        oci.parse_config(b'{"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Cmd": ["a"], "cmd": ["b"]}}',
                         WHERE)


def test_oversized_manifest_is_refused_before_parsing():
    doc = oci_manifest(annotations={"pad": "x" * (oci.MAX_JSON_SIZE)})
    with pytest.raises(ManifestError, match="4 MiB"):
        oci.parse_manifest(js(doc), WHERE, mt.OCI_MANIFEST)


def test_exactly_the_layer_limit_is_accepted():
    m = oci.parse_manifest(js(oci_manifest(layers=[desc()] * oci.MAX_LAYERS)), WHERE)
    assert len(m.layers) == oci.MAX_LAYERS


def test_deeply_nested_json_is_a_manifest_error():
    raw = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ManifestError):
        oci.parse_manifest(raw, WHERE)


# ---------------------------------------------------------------- configs


def test_config_fields():
    raw = js({"os": "linux", "architecture": "arm64", "variant": "v8", "created": "2024-01-01T00:00:00Z",
              "config": {"Entrypoint": ["/bin/app"], "Cmd": ["-v"], "Env": ["A=1"], "WorkingDir": "/w",
                         "User": "1000:1000", "Labels": {"k": "v"}, "StopSignal": "SIGINT",
                         "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}}},
              "rootfs": {"type": "layers", "diff_ids": [DG, DG2]}})
    c = oci.parse_config(raw, WHERE)
    assert c.raw == raw and c.digest == WHERE
    assert (c.os, c.architecture, c.variant) == ("linux", "arm64", "v8")
    assert c.entrypoint == ["/bin/app"] and c.cmd == ["-v"] and c.env == ["A=1"]
    assert (c.working_dir, c.user, c.stop_signal) == ("/w", "1000:1000", "SIGINT")
    assert c.labels == {"k": "v"} and c.exposed_ports == ["80/tcp"] and c.volumes == ["/data"]
    assert c.diff_ids == [Digest.parse(DG), Digest.parse(DG2)]
    assert str(c.platform) == "linux/arm64/v8"


def test_config_with_null_config_section():
    c = oci.parse_config(js({"os": "linux", "architecture": "amd64", "config": None,
                             "rootfs": {"type": "layers", "diff_ids": []}}), WHERE)
    assert c.cmd is None and c.entrypoint is None and c.env == [] and c.working_dir == "" and c.labels == {}


@pytest.mark.parametrize("doc,fragment", [
    ({"os": "linux"}, "no rootfs"),
    ({"rootfs": {"type": "overlay", "diff_ids": []}}, "rootfs.type"),
    ({"rootfs": {"type": "layers", "diff_ids": ["sha256:nothex"]}}, "diff_ids"),
    ({"rootfs": {"type": "layers", "diff_ids": "sha256:x"}}, "diff_ids"),
    ({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Cmd": [1]}}, "Cmd"),
    ({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Env": {"A": "1"}}}, "Env"),
    ({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"User": 0}}, "User"),
    ({"rootfs": {"type": "layers", "diff_ids": []}, "config": {"Labels": {"a": 1}}}, "Labels"),
    ({"rootfs": {"type": "layers", "diff_ids": []}, "config": []}, "config must be an object"),
    ({"rootfs": {"type": "layers", "diff_ids": []}, "architecture": 64}, "architecture"),
], ids=["no-rootfs", "rootfs-type", "bad-diffid", "diffids-str", "cmd", "env", "user", "labels", "cfg", "arch"])
def test_bad_configs_are_refused(doc, fragment):
    with pytest.raises(ManifestError, match=fragment.replace(".", r"\.")):
        oci.parse_config(js(doc), WHERE)


# ---------------------------------------------------------------- platforms

@pytest.mark.parametrize("text,expected", [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("Linux/AMD64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/aarch64", "linux/arm64/v8"),
    ("linux/arm64", "linux/arm64/v8"),
    ("linux/arm64/8", "linux/arm64/v8"),
    ("linux/arm64/v8", "linux/arm64/v8"),
    ("linux/arm64/v9", "linux/arm64/v9"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armv7l", "linux/arm/v7"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/i686", "linux/386"),
    ("linux/riscv64", "linux/riscv64"),
    ("windows/amd64", "windows/amd64"),
])
def test_platform_parse_normalises(text, expected):
    assert str(oci.Platform.parse(text)) == expected


@pytest.mark.parametrize("text", ["linux", "", "linux/", "/amd64", "linux/amd64/v8/x", "linux/am d64", "linux//v8"])
def test_platform_parse_refuses(text):
    with pytest.raises(ImagetoolError, match="invalid platform"):
        oci.Platform.parse(text)


def test_host_platform_agrees_with_the_fixture_builder():
    from fixtures.images import host_platform

    assert oci.Platform.host() == oci.Platform.parse(host_platform())


@pytest.mark.parametrize("want,have,ok", [
    ("linux/amd64", {"os": "linux", "architecture": "amd64"}, True),
    ("linux/amd64", {"os": "linux", "architecture": "arm64"}, False),
    ("linux/amd64", {"os": "windows", "architecture": "amd64"}, False),
    ("linux/arm64", {"os": "linux", "architecture": "arm64", "variant": "v8"}, True),
    ("linux/arm64/v8", {"os": "linux", "architecture": "arm64"}, True),
    ("linux/arm64/v8", {"os": "linux", "architecture": "aarch64"}, True),
    ("linux/arm/v7", {"os": "linux", "architecture": "arm", "variant": "v6"}, False),
    ("linux/arm/v6", {"os": "linux", "architecture": "arm", "variant": "v7"}, False),
    ("linux/arm/v7", {"os": "linux", "architecture": "arm"}, True),
    ("linux/amd64/v3", {"os": "linux", "architecture": "amd64"}, False),
])
def test_platform_matching(want, have, ok):
    assert oci.Platform.parse(want).matches(oci.Platform.from_dict(have)) is ok


def _index(entries) -> oci.Index:
    return oci.parse_manifest(js({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}), WHERE)


def _entry(n: int, platform=None, media_type=mt.OCI_MANIFEST, annotations=None) -> dict:
    d = desc(media_type, "sha256:" + f"{n:x}" * 64, 100 + n)
    if platform is not None:
        d["platform"] = platform
    if annotations:
        d["annotations"] = annotations
    return d


ATTEST = {"vnd.docker.reference.type": "attestation-manifest", "vnd.docker.reference.digest": DG}
UNKNOWN = {"os": "unknown", "architecture": "unknown"}
AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64"}
ARMV7 = {"os": "linux", "architecture": "arm", "variant": "v7"}
ARMV6 = {"os": "linux", "architecture": "arm", "variant": "v6"}
ARMV5 = {"os": "linux", "architecture": "arm", "variant": "v5"}


@pytest.mark.parametrize("entries,want,chosen", [
    ([_entry(1, AMD64), _entry(2, ARM64)], "linux/amd64", 1),
    ([_entry(1, AMD64), _entry(2, ARM64)], "linux/arm64/v8", 2),
    ([_entry(1, AMD64), _entry(2, AMD64)], "linux/amd64", 1),                     # first match wins
    ([_entry(1, UNKNOWN), _entry(2, AMD64)], "linux/amd64", 2),
    ([_entry(1, AMD64, annotations=ATTEST), _entry(2, AMD64)], "linux/amd64", 2),  # attestation skipped
    ([_entry(1, ARMV7), _entry(2, ARM64)], "linux/arm/v7", 1),
    ([_entry(1), _entry(2, ARM64)], "linux/arm64", 2),                           # explicit match beats none
    ([_entry(1, ARM64), _entry(2)], "linux/amd64", 2),                           # platform-less fallback
    ([_entry(1, AMD64, media_type=mt.OCI_INDEX)], "linux/amd64", 1),             # nested index
    ([_entry(1, AMD64, media_type=mt.OCI_LAYER), _entry(2, AMD64)], "linux/amd64", 2),  # not a manifest
    ([_entry(1, ARMV5), _entry(2, ARMV6), _entry(3, ARM64)], "linux/arm/v7", 2),  # arm: best older variant
    ([_entry(1, ARMV6), _entry(2, ARMV7)], "linux/arm/v7", 2),                   # exact beats older
    ([_entry(1), _entry(2, ARMV6)], "linux/arm/v7", 2),                          # older variant beats none
    ([_entry(1, AMD64), _entry(2, ARM64)], "linux/amd64/v3", 1),                 # amd64/v3 runs baseline
], ids=["amd64", "arm64", "first", "unknown-skipped", "attestation", "armv7", "explicit", "fallback", "nested",
        "non-manifest", "armv7-takes-v6", "armv7-exact-first", "armv6-beats-none", "amd64v3-takes-v1"])
def test_select_platform(entries, want, chosen):
    d = oci.select_platform(_index(entries), oci.Platform.parse(want))
    assert d.digest.hex == f"{chosen:x}" * 64


def test_older_variants_never_go_the_other_way_or_across_architectures():
    with pytest.raises(ManifestError, match="no image for platform linux/arm/v6"):
        oci.select_platform(_index([_entry(1, ARMV7)]), "linux/arm/v6")
    with pytest.raises(ManifestError, match="no image for platform linux/arm64/v8"):
        oci.select_platform(_index([_entry(1, ARMV7)]), "linux/arm64")


def test_available_platforms_have_no_control_characters():
    evil = {"os": "linux", "architecture": "x\x1b]0;owned\x07"}
    with pytest.raises(ManifestError) as exc:
        oci.select_platform(_index([_entry(1, evil)]), "linux/amd64")
    assert "\x1b" not in str(exc.value) and "\x07" not in str(exc.value) and "owned" in str(exc.value)


def test_select_platform_error_lists_what_exists():
    idx = _index([_entry(1, AMD64), _entry(2, ARMV7), _entry(3, UNKNOWN, annotations=ATTEST)])
    with pytest.raises(ManifestError) as exc:
        oci.select_platform(idx, "linux/arm64")
    msg = str(exc.value)
    assert "linux/arm64/v8" in msg and "linux/amd64, linux/arm/v7" in msg
    assert "unknown" not in msg
    assert "--platform" in exc.value.hint


def test_select_platform_defaults_to_the_host():
    host = oci.Platform.host()
    other = {"os": "linux", "architecture": "s390x" if host.architecture != "s390x" else "amd64"}
    idx = _index([_entry(1, other), _entry(2, host.to_dict())])
    assert oci.select_platform(idx).digest.hex == "2" * 64
    with pytest.raises(ManifestError, match="no image for platform"):
        oci.select_platform(_index([_entry(1, other)]))


# ---------------------------------------------------------------- media types

@pytest.mark.parametrize("media_type,compression", [
    (mt.OCI_LAYER, None), (mt.OCI_LAYER_GZIP, "gzip"), (mt.OCI_LAYER_ZSTD, "zstd"),
    (mt.OCI_LAYER_ND, None), (mt.OCI_LAYER_ND_GZIP, "gzip"), (mt.OCI_LAYER_ND_ZSTD, "zstd"),
    (mt.DOCKER_LAYER, "gzip"), (mt.DOCKER_LAYER_FOREIGN, "gzip"),
    (mt.OCI_LAYER_GZIP + "; foo=bar", "gzip"),
])
def test_layer_compression(media_type, compression):
    assert mt.layer_compression(media_type) == compression
    assert mt.is_layer(media_type)


@pytest.mark.parametrize("media_type", [mt.OCI_CONFIG, mt.OCI_MANIFEST, "application/x-tar",
                                        "application/vnd.oci.image.layer.v1.tar+bzip2",
                                        "xapplication/vnd.oci.image.layer.v1.tar+gzip", ""])
def test_unknown_layer_media_type_raises(media_type):
    with pytest.raises(ManifestError, match="unsupported layer media type"):
        mt.layer_compression(media_type)


def test_media_type_predicates_are_exact_not_substring():
    assert mt.is_index(mt.OCI_INDEX) and mt.is_index(mt.DOCKER_MANIFEST_LIST + "; x=y")
    assert mt.is_manifest(mt.OCI_MANIFEST) and mt.is_manifest(mt.DOCKER_MANIFEST)
    assert not mt.is_manifest(mt.DOCKER_SCHEMA1) and mt.is_schema1(mt.DOCKER_SCHEMA1_SIGNED)
    assert not mt.is_manifest(mt.OCI_MANIFEST + "x") and not mt.is_index("x" + mt.OCI_INDEX)
    assert mt.is_config(mt.DOCKER_CONFIG) and not mt.is_config(mt.OCI_MANIFEST)
    assert mt.is_nondistributable(mt.DOCKER_LAYER_FOREIGN) and not mt.is_nondistributable(mt.DOCKER_LAYER)
    for t in mt.MANIFEST_ACCEPT:
        assert t in mt.ACCEPT_HEADER
