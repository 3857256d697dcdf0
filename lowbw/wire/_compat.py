"""Shims so the same wire module runs on CPython and MicroPython."""

try:
    from micropython import const  # type: ignore[import-not-found]
except ImportError:  # CPython

    def const(x):  # type: ignore[no-redef]
        return x
