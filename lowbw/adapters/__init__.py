"""Adapters that bring existing sensors and silos into Matrix through the lowbw proxy.

- ``serial_gateway``: ``lowbw serial-gateway --config FILE``. A UART or radio
  modem: SLIP-framed lowbw datagrams from many devices forwarded to the proxy
  over UDP (never decrypted), or sensor lines (``temperature=21.5``, JSON)
  sent as readings of an enrolled device.
- ``mqtt_bridge``: ``lowbw mqtt-bridge --config FILE``. MQTT topics (paho-mqtt,
  MQTT 5 / 3.1.1) to readings of enrolled devices, exactly once; commands from
  the rooms back to MQTT.

Helpers: ``config`` (the TOML files), ``values`` (names -> slots, exact
values), ``line_protocol``, ``devicelink`` (a ``lowbw.device`` client in a
select loop), ``bridge_state`` (the bridge's duplicate keys and outbox),
``logutil``. CPython only.
"""
