"""Reference grammar and normalisation: the distribution/reference rules, table driven."""

from __future__ import annotations

import pytest

from imagetool import reference
from imagetool.errors import InvalidReference

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "0123456789abcdef" * 4

# input -> (str(ref), familiar, domain, path, tag, digest, registry_host)
VALID = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox", "latest",
     None, "registry-1.docker.io"),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36", "docker.io", "library/busybox", "1.36",
     None, "registry-1.docker.io"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox",
     "latest", None, "registry-1.docker.io"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io", "library/busybox",
     "latest", None, "registry-1.docker.io"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io",
     "library/busybox", "latest", None, "registry-1.docker.io"),
    ("index.docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest", "docker.io",
     "library/busybox", "latest", None, "registry-1.docker.io"),
    ("user/app", "docker.io/user/app:latest", "user/app:latest", "docker.io", "user/app", "latest", None,
     "registry-1.docker.io"),
    ("user/app/sub", "docker.io/user/app/sub:latest", "user/app/sub:latest", "docker.io", "user/app/sub",
     "latest", None, "registry-1.docker.io"),
    ("library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest", "docker.io", "library/a/b", "latest",
     None, "registry-1.docker.io"),
    ("localhost/app", "localhost/app:latest", "localhost/app:latest", "localhost", "app", "latest", None,
     "localhost"),
    ("localhost:5000/app:v1", "localhost:5000/app:v1", "localhost:5000/app:v1", "localhost:5000", "app", "v1",
     None, "localhost:5000"),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest", "127.0.0.1:5000/a/b:latest", "127.0.0.1:5000", "a/b",
     "latest", None, "127.0.0.1:5000"),
    ("ghcr.io/owner/repo", "ghcr.io/owner/repo:latest", "ghcr.io/owner/repo:latest", "ghcr.io", "owner/repo",
     "latest", None, "ghcr.io"),
    ("quay.io/app", "quay.io/app:latest", "quay.io/app:latest", "quay.io", "app", "latest", None, "quay.io"),
    ("[::1]:5000/app", "[::1]:5000/app:latest", "[::1]:5000/app:latest", "[::1]:5000", "app", "latest", None,
     "[::1]:5000"),
    # a first component with ':' is a host even without a dot
    ("myhost:80/app", "myhost:80/app:latest", "myhost:80/app:latest", "myhost:80", "app", "latest", None,
     "myhost:80"),
    # an uppercase first component is a host (splitDockerDomain), the path stays lowercase
    ("Registry/app", "Registry/app:latest", "Registry/app:latest", "Registry", "app", "latest", None, "Registry"),
    # a dotless, colonless first component is a Docker Hub user, not a host
    ("myhost/app", "docker.io/myhost/app:latest", "myhost/app:latest", "docker.io", "myhost/app", "latest", None,
     "registry-1.docker.io"),
    ("busybox@" + D1, "docker.io/library/busybox@" + D1, "busybox@" + D1, "docker.io", "library/busybox", None,
     D1, "registry-1.docker.io"),
    ("busybox:1.36@" + D2, "docker.io/library/busybox:1.36@" + D2, "busybox:1.36@" + D2, "docker.io",
     "library/busybox", "1.36", D2, "registry-1.docker.io"),
    ("localhost:5000/app@" + D1, "localhost:5000/app@" + D1, "localhost:5000/app@" + D1, "localhost:5000", "app",
     None, D1, "localhost:5000"),
    # separators in path components: ".", "_", "__", one or more "-"
    ("a_b__c---d/e.f-g", "docker.io/a_b__c---d/e.f-g:latest", "a_b__c---d/e.f-g:latest", "docker.io",
     "a_b__c---d/e.f-g", "latest", None, "registry-1.docker.io"),
    # a dot in the first component makes it a host
    ("a.b/c", "a.b/c:latest", "a.b/c:latest", "a.b", "c", "latest", None, "a.b"),
    # a name that merely looks like a host without a slash is a repository ("localhost:5000" = localhost tag 5000)
    ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000", "docker.io", "library/localhost",
     "5000", None, "registry-1.docker.io"),
    ("docker.io", "docker.io/library/docker.io:latest", "docker.io:latest", "docker.io", "library/docker.io",
     "latest", None, "registry-1.docker.io"),
    # tags: word characters, dots and dashes, up to 128
    ("app:V1.0_rc-2", "docker.io/library/app:V1.0_rc-2", "app:V1.0_rc-2", "docker.io", "library/app",
     "V1.0_rc-2", None, "registry-1.docker.io"),
    ("app:_x", "docker.io/library/app:_x", "app:_x", "docker.io", "library/app", "_x", None,
     "registry-1.docker.io"),
    ("app:" + "t" * 128, "docker.io/library/app:" + "t" * 128, "app:" + "t" * 128, "docker.io", "library/app",
     "t" * 128, None, "registry-1.docker.io"),
    # a 12-hex string is a valid repository name (only 64 hex is reserved for IDs)
    ("0123456789ab", "docker.io/library/0123456789ab:latest", "0123456789ab:latest", "docker.io",
     "library/0123456789ab", "latest", None, "registry-1.docker.io"),
]


@pytest.mark.parametrize("text,full,familiar,domain,path,tag,digest,host", VALID, ids=[v[0][:40] for v in VALID])
def test_valid_references_normalise_like_distribution(text, full, familiar, domain, path, tag, digest, host):
    ref = reference.parse(text)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert ref.registry_host == host
    assert ref.name == f"{domain}/{path}"
    assert ref.reference == (digest or tag)
    # normalisation is idempotent: the full form parses to the same value
    assert reference.parse(full) == ref
    assert reference.parse(familiar) == ref


# input -> a fragment the error message must contain (besides the quoted input)
INVALID = [
    ("", "at least one component"),
    ("Busybox", "must be lowercase"),
    ("user/App", "must be lowercase"),
    ("UPPER.io/Foo", "must be lowercase"),
    ("busybox:", "empty tag"),
    ("busybox:-x", 'invalid tag "-x"'),
    ("busybox:.x", 'invalid tag ".x"'),
    ("busybox:a/b", None),  # the ':' is before the last '/': "busybox:a" is a host with a bad port
    ("app:" + "t" * 129, "invalid tag"),
    ("busybox:tag!", 'invalid tag "tag!"'),
    ("busybox@", "empty digest"),
    ("busybox@sha256:abc", "64 lowercase hex"),
    ("busybox@sha256:" + "A" * 64, "64 lowercase hex"),
    ("busybox@md5:" + "a" * 32, 'unsupported digest algorithm "md5"'),
    ("busybox@" + "a" * 64, "invalid digest"),
    ("busybox@sha256:" + "a" * 64 + "@x", "invalid digest"),
    ("a" * 64, "image ID"),
    ("foo//bar", "empty path component"),
    ("/busybox", "empty path component"),
    ("busybox/", "empty path component"),
    ("-foo", 'invalid repository path component "-foo"'),
    ("foo-/bar", 'invalid repository path component "foo-"'),
    ("foo/.bar", 'invalid repository path component ".bar"'),
    ("foo/b___r", 'invalid repository path component "b___r"'),
    ("foo bar", 'invalid repository path component "foo bar"'),
    (" busybox", "invalid repository path component"),
    ("exa_mple.com/app", 'invalid registry host "exa_mple.com"'),
    ("-bad.io/app", 'invalid registry host "-bad.io"'),
    ("localhost:abc/app", 'invalid port "abc"'),
    ("localhost:/app", 'invalid port ""'),
    ("a/" + "b" * 250, "not be more than 255 characters"),
    ("registry.example.com/" + "/".join(["abcdefghij"] * 22), "not be more than 255 characters"),
    ("@" + D1, "at least one component"),
    (":latest", "at least one component"),
]


@pytest.mark.parametrize("text,fragment", INVALID, ids=[repr(v[0][:30]) for v in INVALID])
def test_invalid_references_name_the_offending_part(text, fragment):
    with pytest.raises(InvalidReference) as exc:
        reference.parse(text)
    msg = str(exc.value)
    assert msg.startswith(f'invalid reference "{text}": ')
    assert "\n" not in msg
    if fragment is not None:
        assert fragment in msg
    assert not reference.is_valid(text)


def test_colon_before_last_slash_is_a_port_not_a_tag():
    with pytest.raises(InvalidReference, match='invalid port "a"'):
        reference.parse("busybox:a/b")


def test_busybox_message_exactly():
    with pytest.raises(InvalidReference) as exc:
        reference.parse("Busybox")
    assert str(exc.value) == 'invalid reference "Busybox": repository name must be lowercase'


def test_name_length_counts_the_domain():
    name = "docker.io/u/" + "a" * (255 - len("docker.io/u/"))
    assert len(name) == 255
    assert reference.parse(name).name == name
    assert reference.parse(name[len("docker.io/"):]).name == name
    with pytest.raises(InvalidReference, match="255"):
        reference.parse(name + "a")
    # the implied "docker.io/library/" counts too
    short = "b" * (255 - len("docker.io/library/"))
    assert reference.parse(short).name == "docker.io/library/" + short
    with pytest.raises(InvalidReference, match="255"):
        reference.parse(short + "b")


def test_with_digest_keeps_the_tag_and_validates():
    ref = reference.parse("localhost:5000/app:v1")
    pinned = ref.with_digest(D1)
    assert str(pinned) == f"localhost:5000/app:v1@{D1}"
    assert pinned.reference == D1
    assert ref.reference == "v1"
    with pytest.raises(InvalidReference):
        ref.with_digest("sha256:short")


def test_with_digest_accepts_a_store_digest():
    from store import Digest

    ref = reference.parse("busybox").with_digest(Digest.parse(D2))
    assert ref.digest == D2


def test_reference_is_a_frozen_value():
    ref = reference.parse("busybox")
    with pytest.raises(AttributeError):
        ref.tag = "x"
    assert ref == reference.parse("docker.io/library/busybox:latest")
    assert hash(ref) == hash(reference.parse("busybox:latest"))
    assert not hasattr(ref, "__dict__")


def test_with_tag_drops_the_digest():
    ref = reference.parse("busybox@" + D1).with_tag("1.0")
    assert str(ref) == "docker.io/library/busybox:1.0"
    with pytest.raises(InvalidReference):
        ref.with_tag("-no")
