"""HTTP status <-> CoAP response code, lossless in both directions.

CoAP response codes have only classes 2, 4 and 5 and a handful of details, so
most HTTP statuses have no CoAP twin. The rule:

1. ``http_to_coap`` picks the *natural* code (table below) or, failing that,
   the *nearest* code of the same class (3xx other than 304, 1xx and 600..999
   go to 5.02 Bad Gateway: the proxy does not follow redirects or interim
   answers for a device, so to a plain CoAP peer it is a gateway failure).
2. If ``coap_to_http`` of that bare code would not give the original status
   back, the response also carries the lowbw **HTTP-Status option**
   (number 65000, RFC 7252 §12.2 experimental range; elective, safe-to-forward,
   so a peer that does not know it just sees the nearest code). Its value is
   the exact status as a CoAP uint (1 or 2 bytes), e.g. 418 -> ``01 a2``.
   On the wire it costs 4 or 5 bytes: ``e2 fc db 01 a2`` when it is the only
   option (delta 65000 in the 2-byte extended form, length 2, value 418).
3. ``coap_to_http`` returns the option's status if present (it must agree in
   class with the code, else DecodeError), otherwise the table below, otherwise
   200/400/500 for an unknown detail of class 2/4/5 and 502 for anything that is
   not a response code at all (0.00, 1.xx, 3.xx, 6.xx, 7.xx). Never 0.

200 depends on the request method: 2.05 Content for GET/FETCH/HEAD/others,
2.04 Changed for POST/PUT/PATCH/iPATCH, 2.02 Deleted for DELETE; all three map
back to 200 (so a Matrix send, PUT -> 200, is a bare 2.04). Other 2xx use the
same method rule plus the option, except 201 <-> 2.01 Created.

Deviations from RFC 8075 §7 on purpose: 4.01 <-> 401 (RFC 8075 says 403) and
4.05 <-> 405 (RFC 8075 says 400), because Matrix clients act on 401
(M_UNKNOWN_TOKEN, soft logout) and HTTP's demand for WWW-Authenticate/Allow
headers does not apply across our link.

1xx statuses are interim and never forwarded (aiohttp consumes them); should
one be handed in as final it is still carried exactly (5.02 + option).

Retry-After (delta-seconds) travels as Max-Age (option 14) on 4.29 and 5.03
(RFC 8516 §4, RFC 7252 §5.9.3.4); an HTTP-date must be turned into seconds by
the caller. Fractions round up so a client never retries early.

Shared verbatim with MicroPython.
"""

from lowbw.wire._compat import const
from lowbw.wire.coap import (
    BAD_GATEWAY,
    BAD_REQUEST,
    CHANGED,
    CONFLICT,
    CONTENT,
    CREATED,
    DELETED,
    FORBIDDEN,
    GATEWAY_TIMEOUT,
    HOP_LIMIT_REACHED,
    INTERNAL_SERVER_ERROR,
    MAX_AGE,
    METHOD_NOT_ALLOWED,
    NOT_ACCEPTABLE,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    REQUEST_ENTITY_TOO_LARGE,
    SERVICE_UNAVAILABLE,
    TOO_MANY_REQUESTS,
    UNAUTHORIZED,
    UNPROCESSABLE_ENTITY,
    UNSUPPORTED_CONTENT_FORMAT,
    VALID,
    uint_decode,
    uint_encode,
)
from lowbw.wire.errors import DecodeError, EncodeError

HTTP_STATUS_OPTION = const(65000)
MAX_RETRY_AFTER = const(0xFFFFFFFF)  # Max-Age is a 4-byte uint

# CoAP code -> HTTP status when no HTTP-Status option is present.
TO_HTTP = {
    CREATED: 201,
    DELETED: 200,
    VALID: 304,
    CHANGED: 200,
    CONTENT: 200,
    BAD_REQUEST: 400,
    UNAUTHORIZED: 401,
    130: 400,  # 4.02 Bad Option
    FORBIDDEN: 403,
    NOT_FOUND: 404,
    METHOD_NOT_ALLOWED: 405,
    NOT_ACCEPTABLE: 406,
    136: 400,  # 4.08 Request Entity Incomplete
    CONFLICT: 409,
    PRECONDITION_FAILED: 412,
    REQUEST_ENTITY_TOO_LARGE: 413,
    UNSUPPORTED_CONTENT_FORMAT: 415,
    UNPROCESSABLE_ENTITY: 422,
    TOO_MANY_REQUESTS: 429,
    INTERNAL_SERVER_ERROR: 500,
    NOT_IMPLEMENTED: 501,
    BAD_GATEWAY: 502,
    SERVICE_UNAVAILABLE: 503,
    GATEWAY_TIMEOUT: 504,
    165: 502,  # 5.05 Proxying Not Supported
    HOP_LIMIT_REACHED: 508,  # RFC 8768 5.08 Hop Limit Reached ~ 508 Loop Detected
}

# HTTP status -> CoAP code, natural twins and nearest codes (non-2xx).
FROM_HTTP = {
    201: CREATED,
    304: VALID,
    400: BAD_REQUEST,
    401: UNAUTHORIZED,
    403: FORBIDDEN,
    404: NOT_FOUND,
    405: METHOD_NOT_ALLOWED,
    406: NOT_ACCEPTABLE,
    409: CONFLICT,
    412: PRECONDITION_FAILED,
    413: REQUEST_ENTITY_TOO_LARGE,
    415: UNSUPPORTED_CONTENT_FORMAT,
    422: UNPROCESSABLE_ENTITY,
    429: TOO_MANY_REQUESTS,
    500: INTERNAL_SERVER_ERROR,
    501: NOT_IMPLEMENTED,
    502: BAD_GATEWAY,
    503: SERVICE_UNAVAILABLE,
    504: GATEWAY_TIMEOUT,
    508: HOP_LIMIT_REACHED,
    # nearest, exact status in the HTTP-Status option
    407: UNAUTHORIZED,
    410: NOT_FOUND,
    417: PRECONDITION_FAILED,
    423: FORBIDDEN,
    428: PRECONDITION_FAILED,
    431: REQUEST_ENTITY_TOO_LARGE,
    451: FORBIDDEN,
    505: NOT_IMPLEMENTED,
}

_CHANGING = ("POST", "PUT", "PATCH", "IPATCH")


def _code_for(status, method):
    code = FROM_HTTP.get(status)
    if code is not None:
        return code
    cls = status // 100
    if cls == 2:
        m = method.upper()
        if m in _CHANGING:
            return CHANGED
        if m == "DELETE":
            return DELETED
        return CONTENT
    if cls == 4:
        return BAD_REQUEST
    if cls == 5:
        return INTERNAL_SERVER_ERROR
    return BAD_GATEWAY


def http_to_coap(status, method="GET", retry_after=None):
    """``(code, extra_options)`` for an HTTP response to ``method``.

    ``extra_options`` is a list of ``(number, bytes)`` in ascending order: Max-Age
    for ``retry_after`` seconds on 4.29/5.03, then the HTTP-Status option if the
    bare code would not give ``status`` back.
    """
    if not 100 <= status <= 999:
        raise EncodeError("HTTP status %r is not three digits" % (status,))
    code = _code_for(status, method)
    opts = []
    if retry_after is not None and (code == TOO_MANY_REQUESTS or code == SERVICE_UNAVAILABLE):
        opts = retry_after_to_options(retry_after)
    if TO_HTTP.get(code) != status:
        opts.append((HTTP_STATUS_OPTION, uint_encode(status, 2)))
    return code, opts


def _code_class_for(status):
    cls = status // 100
    if cls == 2 or cls == 4 or cls == 5:
        return cls
    return 2 if status == 304 else 5


def coap_to_http(code, options=()):
    """HTTP status for a CoAP response ``code`` and its ``(number, bytes)`` options."""
    exact = None
    for num, val in options:
        if num == HTTP_STATUS_OPTION:
            if exact is not None:
                raise DecodeError("HTTP-Status option repeated")
            exact = uint_decode(val, 2)
            if not 100 <= exact <= 999 or _code_class_for(exact) != code >> 5:
                raise DecodeError("HTTP-Status option %d does not fit code %d" % (exact, code))
    if exact is not None:
        return exact
    status = TO_HTTP.get(code)
    if status is not None:
        return status
    cls = code >> 5
    if cls == 2:
        return 200
    if cls == 4:
        return 400
    if cls == 5:
        return 500
    return 502


def retry_after_to_options(seconds):
    """``[(MAX_AGE, uint)]`` for a Retry-After in seconds (clamped to 0..2**32-1)."""
    if seconds is None:
        return []
    s = int(seconds)
    if s < seconds:
        s += 1
    if s < 0:
        s = 0
    elif s > MAX_RETRY_AFTER:
        s = MAX_RETRY_AFTER
    return [(MAX_AGE, uint_encode(s))]


def retry_after_from_options(options, code=None):
    """Retry-After seconds from Max-Age, or None; with ``code``, only on 4.29/5.03."""
    if code is not None and code != TOO_MANY_REQUESTS and code != SERVICE_UNAVAILABLE:
        return None
    for num, val in options:
        if num == MAX_AGE:
            return uint_decode(val, 4)
    return None
