"""``lowbw mqtt-bridge`` that dies in the worst place: a reading durably queued, its MQTT message not acked.

Run as ``python tests/adapters/crashing_bridge.py --crash-after N --config
FILE``: the first N messages are acknowledged as usual; the next
one is queued in the device store (and its duplicate key recorded), then the
process exits at once, before the PUBACK. The broker redelivers that message
(DUP) to the next bridge, which must recognise it and only acknowledge it.
"""

from __future__ import annotations

import os
import sys

from lowbw.adapters import mqtt_bridge

CRASH_AFTER = 0


class CrashingBridge(mqtt_bridge.MqttBridge):
    acks = 0

    def _ack(self, m: mqtt_bridge.Incoming) -> None:
        if CrashingBridge.acks >= CRASH_AFTER:
            sys.stderr.write("crashing before acknowledging packet %d (%s)\n" % (m.mid, m.topic))
            sys.stderr.flush()
            os._exit(9)
        CrashingBridge.acks += 1
        super()._ack(m)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--crash-after"]:
        CRASH_AFTER = int(args[1])
        args = args[2:]
    mqtt_bridge.MqttBridge = CrashingBridge  # type: ignore[misc]
    sys.exit(mqtt_bridge.main(args))
