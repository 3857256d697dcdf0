"""CPython tests of the device client's I/O shells (UDP loop, CLI, MicroPython process)."""
