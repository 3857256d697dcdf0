"""LoRaWAN: network-server MQTT formats (The Things Stack v3, ChirpStack v4), the
silo bridge's parsing and downlink building (``formats``, ``decoder``), and lowbw
end to end over LoRaWAN (``fragment``, ``gateway``). See docs/lorawan.md."""
