"""Route table round trips on generated paths (CPython only)."""

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lowbw.wire import routes
from lowbw.wire.errors import DecodeError, EncodeError

# Text that needs escaping: sigils, separators, '%', '/', spaces, non-ASCII.
segment_text = st.text(
    alphabet=st.one_of(st.sampled_from("!@#$%&+:/?= ._-~'*()[],;"), st.characters(codec="utf-8")),
    max_size=12,
)
# A version segment of "." or ".." is never spelled by a route (routes.encode_path:
# dot segments travel as plain paths); test_dot_version_is_a_plain_path has those.
versions = st.one_of(st.sampled_from(["r0", "v1", "v3", "unstable", "v4", ""]), segment_text).filter(
    lambda v: v not in (".", "..")
)


def canonical(segments):
    dots = {".": "%2E", "..": "%2E%2E"}
    return "/" + "/".join(dots.get(s) or quote(s, safe="") for s in segments)


def option_bytes(segments):
    total = 0
    for s in segments:
        n = len(s.encode())
        total += n + (1 if n < 13 else 2 if n < 269 else 3)
    return total


@st.composite
def templated(draw):
    """(path segments, route id, version, params) from a random route template."""
    rid, default, template = draw(st.sampled_from(routes.ROUTES))
    version = default if default is None else draw(st.one_of(st.just(default), versions))
    segs = []
    params = []
    for seg in template[1:].split("/"):
        if seg == "{v}":
            segs.append(version)
        elif seg.startswith("{"):
            p = draw(segment_text)
            segs.append(p)
            params.append(p)
        else:
            segs.append(seg)
    return segs, rid, version, params


@given(templated())
def test_templated_paths_round_trip(t):
    segs, rid, version, params = t
    path = canonical(segs)
    encoded = routes.encode_path(path)
    assert routes.decode_segments(encoded) == path
    assert routes.encode_path(routes.decode_segments(encoded)) == encoded
    got_rid, got_version, got_params = routes.parse_segments(encoded)
    # The encoder may pick another id for the same template (MSC3079 vs
    # ours) when that spells the version more cheaply, never a worse one.
    assert got_params == params and got_version == version
    own = rid if version == routes._BY_ID[rid][1] else rid + "." + version
    assert len(encoded[0]) <= len(own)
    assert option_bytes(encoded) < option_bytes(segs)


@given(templated())
def test_loosely_escaped_paths_normalise(t):
    segs = t[0]
    loose = "/" + "/".join(quote(s, safe="!@$:,;=+'*()") for s in segs)
    assert routes.decode_segments(routes.encode_path(loose)) == canonical(segs)


@given(st.lists(segment_text, min_size=1, max_size=6))
def test_arbitrary_paths_round_trip(segs):
    path = canonical(segs)
    encoded = routes.encode_path(path)
    assert routes.decode_segments(encoded) == path
    assert routes.encode_path(routes.decode_segments(encoded)) == encoded


@given(st.lists(st.text(max_size=6), min_size=1, max_size=5))
def test_unknown_paths_take_the_fallback(segs):
    segs = ["_xx" + segs[0]] + segs[1:]  # three characters: never a route id
    path = canonical(segs)
    encoded = routes.encode_path(path)
    assert encoded == [routes._esc(s) for s in segs]
    assert "." not in encoded and ".." not in encoded
    assert routes.decode_segments(encoded) == path


@given(st.text(max_size=40))
def test_fuzz_encode_path(text):
    try:
        encoded = routes.encode_path("/" + text)
    except EncodeError:
        return
    path = routes.decode_segments(encoded)
    assert routes.encode_path(path) == encoded


@given(st.lists(st.one_of(st.text(max_size=4), st.sampled_from([r[0] for r in routes.ROUTES])), max_size=6))
def test_fuzz_decode_segments(segs):
    try:
        path = routes.decode_segments(segs)
    except DecodeError:
        return
    assert routes.decode_segments(routes.encode_path(path)) == path


@pytest.mark.parametrize("dot", [".", ".."])
def test_dot_version_is_a_plain_path(dot):
    path = canonical(["_matrix", "client", dot, "login"])
    encoded = routes.encode_path(path)
    assert routes.decode_segments(encoded) == path
    assert routes.parse_segments(encoded)[0] is None  # no route id: the path as it is
