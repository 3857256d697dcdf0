"""The error hierarchy behaves the same on both runtimes."""

from lowbw.wire import errors
from tests.portable.check import raises


def test_every_error_is_a_lowbw_error():
    for cls in (errors.DecodeError, errors.LimitError, errors.EncodeError, errors.AuthError,
                errors.ReplayError, errors.StateError, errors.RekeyRequired):
        assert issubclass(cls, errors.LowbwError)


def test_coap_code_hint_and_override():
    assert errors.DecodeError("x").coap_code == 128
    assert errors.LimitError("x").coap_code == 141
    e = errors.LowbwError("y", coap_code=163)
    assert e.coap_code == 163 and e.message == "y"


def test_raises_helper_fails_when_nothing_raised():
    exc = raises(AssertionError, raises, ValueError, lambda: None)
    assert "ValueError" in str(exc)
