"""The lowbw device client: a sensor that publishes readings through the proxy.

Runs on MicroPython (unix port and boards) and on CPython, so it keeps to the
Python subset ``lowbw.wire`` uses. Modules, loaded only when needed so a board
pays RAM for what it uses:

- ``config``: load and validate the device config JSON (``lowbw device enroll``);
- ``store``: the persistent state (session, message counter, queue, in-flight
  request) with atomic writes;
- ``client``: ``Device``, the sans-I/O state machine (bytes and times in,
  datagrams out);
- ``udp``: a blocking poll loop that drives a Device over a UDP socket;
- ``cli``: ``lowbw device send`` (CPython only).

docs/PROTOCOL.md, "Device client", describes the behaviour and the store format.
"""
