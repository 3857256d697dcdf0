"""Compact encodings of Matrix bodies for the link: preset dictionaries and the body codec."""
