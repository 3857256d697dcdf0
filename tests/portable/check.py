"""Assertion helpers for tests that run on both CPython and MicroPython.

MicroPython has no pytest and no unittest, so portable tests are plain
``test_*`` functions using ``assert`` and these helpers.
"""


def raises(exc_type, fn, *args, **kwargs):
    """Call fn and return the exception it raised; fail unless it is exc_type."""
    try:
        fn(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError("expected %s from %r" % (exc_type.__name__, fn))


def unhex(text):
    """Bytes from hex text that may contain spaces and newlines."""
    out = bytearray()
    digits = "".join(text.split())
    if len(digits) % 2:
        raise ValueError("odd number of hex digits")
    for i in range(0, len(digits), 2):
        out.append(int(digits[i : i + 2], 16))
    return bytes(out)
