"""The one error hierarchy of lowbw.

Every error lowbw raises on purpose derives from LowbwError. Each class carries
a CoAP response-code hint (``coap_code``, as the class number times 32 plus the
detail, RFC 7252 §3) so an I/O shell can turn an error into an answer without a
table of its own. A decoder fed bad input raises DecodeError (or a subclass),
never IndexError, struct.error or UnicodeError.

Shared verbatim with MicroPython: no dataclasses, no typing at runtime.
"""


class LowbwError(Exception):
    """Root of every error lowbw raises on purpose."""

    coap_code = 160  # 5.00 Internal Server Error

    def __init__(self, message="", coap_code=None):
        super().__init__(message)
        self.message = message
        if coap_code is not None:
            self.coap_code = coap_code


class DecodeError(LowbwError):
    """Input is malformed: garbage, truncated, or not what the format allows."""

    coap_code = 128  # 4.00 Bad Request


class LimitError(DecodeError):
    """Input declares a length, depth or count beyond what we accept."""

    coap_code = 141  # 4.13 Request Entity Too Large


class EncodeError(LowbwError):
    """A value cannot be represented in the wire format (caller's mistake)."""


class AuthError(LowbwError):
    """Authentication failed: bad tag, unknown or unenrolled key.

    An I/O shell answers an unauthenticated datagram with silence.
    """

    coap_code = 129  # 4.01 Unauthorized


class ReplayError(AuthError):
    """A frame's counter was already seen or is older than the replay window."""


class StateError(LowbwError):
    """The operation is not valid in the current protocol state."""


class RekeyRequired(StateError):
    """A session reached its nonce limit and must re-handshake before sending."""
