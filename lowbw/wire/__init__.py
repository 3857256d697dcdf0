"""Sans-I/O protocol core shared verbatim by CPython and MicroPython.

Bytes in, events out. No sockets, no asyncio, no clock: time is passed in as
an argument. Only the Python subset that MicroPython runs is used here.
"""
