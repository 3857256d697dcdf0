"""Property tests for lowbw.wire.status: every HTTP status survives the trip."""

import math

from aiocoap import Message as AMessage
from hypothesis import given
from hypothesis import strategies as st

from lowbw.wire import coap, status
from lowbw.wire.coap import Message
from lowbw.wire.errors import DecodeError

METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "FETCH", "iPATCH", "PROPFIND"]
RESPONSE_CLASSES = (2, 4, 5)


def _through_the_wire(http, method):
    """Status -> CoAP ACK bytes -> (our decoder, aiocoap's decoder) -> status."""
    code, opts = status.http_to_coap(http, method)
    req = Message(coap.CON, coap.PUT if method == "PUT" else coap.GET, 0x1234)
    wire = coap.make_response(req, code, b"{}", opts).encode()
    ours = coap.decode(wire)
    theirs = AMessage.decode(wire)
    via_aiocoap = status.coap_to_http(
        int(theirs.code), [(int(o.number), o.encode()) for o in theirs.opt.option_list()]
    )
    return status.coap_to_http(ours.code, ours.options), via_aiocoap, len(wire)


def test_every_status_and_method_round_trips():
    checked = 0
    for http in range(100, 1000):
        for method in METHODS:
            code, opts = status.http_to_coap(http, method)
            assert code >> 5 in RESPONSE_CLASSES, (http, method, code)
            assert status.coap_to_http(code, opts) == http
            ours, via_aiocoap, size = _through_the_wire(http, method)
            assert ours == via_aiocoap == http, (http, method)
            bare = status.coap_to_http(code, [])
            if bare == http:
                assert opts == [] and size == 4 + 1 + 2  # header, marker, "{}"
            else:
                # exactly one escape option: 1 + 2 header bytes, 1- or 2-byte uint
                assert [n for n, _ in opts] == [status.HTTP_STATUS_OPTION]
                assert size == 4 + (4 if http < 256 else 5) + 1 + 2
            cls = http // 100
            if cls in RESPONSE_CLASSES:
                assert code >> 5 == cls  # a plain CoAP peer sees success/client/server right
            if code == coap.INTERNAL_SERVER_ERROR:
                assert cls == 5  # nothing is silently turned into 5.00
            checked += 1
    assert checked == 900 * len(METHODS)


def test_common_matrix_answers_need_no_escape():
    # What a homeserver answers in normal operation must cost no extra bytes.
    for http in (200, 201, 400, 401, 403, 404, 405, 409, 413, 429, 500, 502, 503, 504):
        for method in METHODS:
            assert status.http_to_coap(http, method)[1] == []


@given(st.integers(100, 999), st.sampled_from(METHODS), st.integers(0, 2**32 - 1))
def test_round_trip_with_retry_after(http, method, seconds):
    code, opts = status.http_to_coap(http, method, retry_after=seconds)
    assert status.coap_to_http(code, opts) == http
    assert [n for n, _ in opts] == sorted(n for n, _ in opts)
    got = status.retry_after_from_options(opts, code)
    if code in (coap.TOO_MANY_REQUESTS, coap.SERVICE_UNAVAILABLE):
        assert got == seconds
    else:
        assert got is None


@given(st.floats(min_value=-1e6, max_value=1e10, allow_nan=False))
def test_retry_after_never_early(seconds):
    opts = status.retry_after_to_options(seconds)
    got = status.retry_after_from_options(opts)
    want = min(max(math.ceil(seconds), 0), 2**32 - 1)
    assert got == want


@given(
    st.integers(0, 255),
    st.lists(st.tuples(st.sampled_from([14, status.HTTP_STATUS_OPTION, 11, 65001]), st.binary(max_size=5))),
)
def test_coap_to_http_on_arbitrary_options(code, options):
    try:
        http = status.coap_to_http(code, options)
    except DecodeError:
        return
    assert 100 <= http <= 999
