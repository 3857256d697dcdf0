"""The lowbw proxy: CoAP+CBOR+Noise over UDP on one side, HTTP(S)+JSON Matrix on the other.

It runs beside a homeserver, holds the homeserver credentials (an application
service token, or per-device access tokens) and never sends one over the radio.
``lowbw.proxy.homeserver`` is its HTTP client.
"""
