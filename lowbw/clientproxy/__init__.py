"""The client-proxy: a stock Matrix client's HTTP+JSON in, lowbw across the radio (docs/client-proxy.md)."""
