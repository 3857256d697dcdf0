"""LoRaWAN class A for radio_sim: presets, and a STAND-IN for a LoRaWAN network server.

``NetworkServerStandIn`` is not a network server. It stands in for one (The
Things Stack v3 or ChirpStack v4) plus its gateways and the radio, so that
lowbw's LoRaWAN path can be tested end to end against a real MQTT broker:

- devices reach it over UDP with the modem protocol of ``lowbw.device.lorawan``
  (uplink ``01 | DevEUI | FPort | payload``; after the receive windows
  ``02 | FPort | flags | payload``, ``03`` for none, ``04 | reason`` if refused);
- it enforces the class-A rules of its preset: the FRMPayload limit of the data
  rate (a bigger frame is refused), the duty cycle of each device (a frame sent
  too early is refused and counted, as a regional regulator would want), and
  downlinks only in RX1 / RX2 after an uplink, one per uplink, FPending set when
  more are queued;
- it publishes each uplink in the network server's MQTT format (``tts-v3`` or
  ``chirpstack-v4``, the shapes of tests/lorawan/fixtures) and takes downlinks
  from the network server's downlink topics, answering with the outcome events
  (TTS ``down/queued`` / ``down/sent``; ChirpStack ``txack``);
- airtime (the Semtech formula, ``radio_sim.lora``), the receive-window delays
  and the duty-cycle clock are multiplied by ``time_scale`` so a test at DR0
  does not wait minutes; every frame is logged with its unscaled airtime.

What it does not do: LoRaWAN MAC commands, ADR, joins, MIC/encryption, frame
counters per session beyond a plain count, gateways' own duty cycle, collisions.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from radio_sim.lora import time_on_air

log = logging.getLogger("radio_sim.lorawan")

LORAWAN_OVERHEAD = 13  # MHDR, DevAddr, FCtrl, FCnt, FPort, MIC


@dataclass(frozen=True)
class ClassAPreset:
    name: str
    sf: int
    bw_hz: int
    max_payload: int  # FRMPayload bytes (no repeater)
    frequency: int
    rx1_delay_s: float = 1.0
    rx2_delay_s: float = 2.0
    duty_cycle: float = 0.01
    dr: int = 0

    def airtime(self, frm_payload_len: int) -> float:
        """Seconds on air of a frame with ``frm_payload_len`` bytes of FRMPayload."""
        return float(time_on_air(LORAWAN_OVERHEAD + frm_payload_len, sf=self.sf, bw_hz=float(self.bw_hz)))

    def off_time(self, airtime: float) -> float:
        return airtime * (1.0 / self.duty_cycle - 1.0)


def _eu(dr: int, sf: int, max_payload: int) -> ClassAPreset:
    return ClassAPreset("eu868-dr%d" % dr, sf, 125_000, max_payload, 868_100_000, dr=dr)


# EU868 (RP002-1.0.3 table "EU863-870 maximum payload size", no repeater); US915 DR0 is
# SF10 at 125 kHz with an 11-byte FRMPayload and no duty cycle (dwell time instead).
LORAWAN_PRESETS: dict[str, ClassAPreset] = {
    "eu868-dr0": _eu(0, 12, 51),
    "eu868-dr1": _eu(1, 11, 51),
    "eu868-dr2": _eu(2, 10, 51),
    "eu868-dr3": _eu(3, 9, 115),
    "eu868-dr4": _eu(4, 8, 222),
    "eu868-dr5": _eu(5, 7, 222),
    "us915-dr0": ClassAPreset("us915-dr0", 10, 125_000, 11, 902_300_000, duty_cycle=1.0, dr=0),
}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%06dZ" % int((t % 1) * 1e6)


@dataclass
class _Device:
    eui: str
    addr: Any = None
    f_cnt: int = 0
    f_cnt_down: int = 0
    next_tx: float = 0.0
    downlinks: list[tuple[int, bytes, str]] = field(default_factory=list)  # (fport, payload, ref)


@dataclass
class FrameLog:
    t: float
    direction: str  # "up" / "down"
    eui: str
    fport: int
    size: int
    airtime: float  # unscaled seconds


class NetworkServerStandIn:
    """The network-server stand-in (module docstring). ``start()`` / ``stop()``."""

    def __init__(
        self,
        broker_port: int,
        fmt: str = "tts-v3",
        application: str = "lowbw-lorawan",
        preset: str = "eu868-dr0",
        time_scale: float = 1.0,
        broker_host: str = "127.0.0.1",
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        from paho.mqtt import client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if fmt not in ("tts-v3", "chirpstack-v4"):
            raise ValueError("format must be tts-v3 or chirpstack-v4")
        self.fmt = fmt
        self.application = application
        self.p = LORAWAN_PRESETS[preset]
        self.scale = time_scale
        self.devices: dict[str, _Device] = {}
        self.lock = threading.Lock()
        self.frames: list[FrameLog] = []
        self.counters = {"uplinks": 0, "refused_size": 0, "refused_duty": 0, "downlinks": 0, "bad": 0}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(listen)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.mqtt = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="lowbw-ns-standin-%s" % uuid.uuid4().hex[:6]
        )
        self.mqtt.on_message = self._on_message
        self.mqtt.on_connect = self._on_connect
        self._subscribed = threading.Event()
        self.mqtt.on_subscribe = lambda *a: self._subscribed.set()
        self.mqtt.connect(broker_host, broker_port)
        self.thread = threading.Thread(target=self._serve, daemon=True, name="ns-standin")

    # -- MQTT --------------------------------------------------------------------------

    def _on_connect(self, client: Any, *_a: Any) -> None:
        if self.fmt == "tts-v3":
            client.subscribe("v3/%s/devices/+/down/+" % self.application, qos=0)
        else:
            client.subscribe("application/%s/device/+/command/down" % self.application, qos=1)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            levels = msg.topic.split("/")
            body = json.loads(msg.payload)
            if self.fmt == "tts-v3":
                if levels[-1] not in ("push", "replace"):
                    return
                device_id = levels[3]
                eui = device_id.removeprefix("eui-")
                items = body["downlinks"]
                with self.lock:
                    dev = self.devices.setdefault(eui, _Device(eui))
                    if levels[-1] == "replace":
                        dev.downlinks.clear()
                    for it in items:
                        data = base64.b64decode(it.get("frm_payload", ""))
                        ref = ",".join(it.get("correlation_ids", []))
                        self._queue(dev, int(it["f_port"]), data, ref, it)
            else:
                eui = levels[3]
                if body.get("devEui") != eui:
                    self.counters["bad"] += 1
                    return
                with self.lock:
                    dev = self.devices.setdefault(eui, _Device(eui))
                    self._queue(
                        dev,
                        int(body["fPort"]),
                        base64.b64decode(body.get("data", "")),
                        body.get("id", ""),
                        body,
                    )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            self.counters["bad"] += 1
            log.warning("stand-in: bad downlink on %s: %s", msg.topic, exc)

    def _queue(self, dev: _Device, fport: int, data: bytes, ref: str, item: dict[str, Any]) -> None:
        if len(data) > self.p.max_payload:
            self._outcome(dev, "failed", ref, item)
            return
        dev.downlinks.append((fport, data, ref))
        if self.fmt == "tts-v3":
            self._outcome(dev, "queued", ref, item)

    def _outcome(self, dev: _Device, kind: str, ref: str, item: dict[str, Any]) -> None:
        now = time.time()
        if self.fmt == "tts-v3":
            ids = self._tts_ids(dev)
            key = {"queued": "downlink_queued", "sent": "downlink_sent", "failed": "downlink_failed"}[kind]
            down = {
                "f_port": item.get("f_port"),
                "frm_payload": item.get("frm_payload", ""),
                "correlation_ids": ref.split(",") if ref else [],
            }
            body: dict[str, Any] = {"end_device_ids": ids, "received_at": _iso(now)}
            body[key] = {"downlink": down, "error": {"name": "too_long"}} if kind == "failed" else down
            topic = "v3/%s/devices/%s/down/%s" % (self.application, ids["device_id"], kind)
            self.mqtt.publish(topic, json.dumps(body), qos=0)
        elif kind == "sent":
            body = {
                "downlinkId": dev.f_cnt_down,
                "time": _iso(now),
                "deviceInfo": self._cs_info(dev),
                "queueItemId": ref,
                "fCntDown": dev.f_cnt_down,
                "gatewayId": "0016c001f153a14c",
            }
            self.mqtt.publish(
                "application/%s/device/%s/event/txack" % (self.application, dev.eui), json.dumps(body), qos=1
            )

    def _tts_ids(self, dev: _Device) -> dict[str, Any]:
        return {
            "device_id": "eui-%s" % dev.eui,
            "application_ids": {"application_id": self.application.split("@")[0]},
            "dev_eui": dev.eui.upper(),
            "dev_addr": "260B%04X" % (int(dev.eui[-4:], 16)),
        }

    def _cs_info(self, dev: _Device) -> dict[str, Any]:
        return {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242",
            "tenantName": "stand-in",
            "applicationId": self.application,
            "applicationName": "lowbw",
            "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
            "deviceProfileName": "lowbw",
            "deviceName": dev.eui,
            "devEui": dev.eui,
        }

    def _publish_uplink(self, dev: _Device, fport: int, data: bytes, airtime: float) -> None:
        now = time.time()
        b64 = base64.b64encode(data).decode()
        if self.fmt == "tts-v3":
            up: dict[str, Any] = {
                "session_key_id": "c3RhbmQtaW4=",
                "f_port": fport,
                "f_cnt": dev.f_cnt,
                "frm_payload": b64,
                "rx_metadata": [
                    {
                        "gateway_ids": {"gateway_id": "stand-in-gw", "eui": "B827EBFFFE61C2A0"},
                        "rssi": -110,
                        "channel_rssi": -110,
                        "snr": -5.5,
                    }
                ],
                "settings": {
                    "data_rate": {"lora": {"bandwidth": self.p.bw_hz, "spreading_factor": self.p.sf}},
                    "frequency": str(self.p.frequency),
                },
                "received_at": _iso(now),
                "consumed_airtime": "%.6fs" % airtime,
            }
            body: dict[str, Any] = {
                "end_device_ids": self._tts_ids(dev),
                "received_at": _iso(now),
                "uplink_message": up,
            }
            topic = "v3/%s/devices/eui-%s/up" % (self.application, dev.eui)
            self.mqtt.publish(topic, json.dumps(body), qos=0)
        else:
            body = {
                "deduplicationId": str(uuid.uuid4()),
                "time": _iso(now),
                "deviceInfo": self._cs_info(dev),
                "devAddr": "00189440",
                "dr": self.p.dr,
                "fCnt": dev.f_cnt,
                "fPort": fport,
                "data": b64,
                "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -110, "snr": -5.5}],
                "txInfo": {
                    "frequency": self.p.frequency,
                    "modulation": {"lora": {"bandwidth": self.p.bw_hz, "spreadingFactor": self.p.sf}},
                },
            }
            topic = "application/%s/device/%s/event/up" % (self.application, dev.eui)
            self.mqtt.publish(topic, json.dumps(body), qos=1)

    # -- radio side --------------------------------------------------------------------

    def start(self) -> None:
        self.mqtt.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the stand-in could not subscribe at the broker")
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        self.mqtt.disconnect()
        self.mqtt.loop_stop()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(1024)
            except TimeoutError:
                continue
            except OSError:
                return
            if len(data) < 10 or data[0] != 1:
                self.counters["bad"] += 1
                continue
            # Each uplink's windows in their own thread: devices do not wait for each other.
            threading.Thread(target=self._uplink, args=(data, addr), daemon=True).start()

    def _uplink(self, data: bytes, addr: Any) -> None:
        eui = data[1:9].hex()
        fport, payload = data[9], data[10:]
        now = time.monotonic()
        with self.lock:
            dev = self.devices.setdefault(eui, _Device(eui))
            dev.addr = addr
            if len(payload) > self.p.max_payload:
                self.counters["refused_size"] += 1
                self.sock.sendto(b"\x04frame too large for %s" % self.p.name.encode(), addr)
                return
            airtime = self.p.airtime(len(payload))
            if now < dev.next_tx - 1e-3:
                self.counters["refused_duty"] += 1
                self.sock.sendto(b"\x04duty cycle", addr)
                return
            dev.next_tx = now + (airtime + self.p.off_time(airtime)) * self.scale
            self.counters["uplinks"] += 1
            dev.f_cnt += 1
            self.frames.append(FrameLog(time.time(), "up", eui, fport, len(payload), airtime))
        time.sleep(airtime * self.scale)
        end_of_uplink = time.monotonic()
        self._publish_uplink(dev, fport, payload, airtime)
        for delay in (self.p.rx1_delay_s, self.p.rx2_delay_s):
            wait = end_of_uplink + delay * self.scale - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with self.lock:
                if dev.downlinks:
                    dport, ddata, ref = dev.downlinks.pop(0)
                    pending = bool(dev.downlinks)
                    dev.f_cnt_down += 1
                    self.counters["downlinks"] += 1
                    self.frames.append(
                        FrameLog(time.time(), "down", eui, dport, len(ddata), self.p.airtime(len(ddata)))
                    )
                else:
                    continue
            time.sleep(self.p.airtime(len(ddata)) * self.scale)
            self.sock.sendto(bytes([2, dport, 1 if pending else 0]) + ddata, addr)
            item = {"f_port": dport, "frm_payload": base64.b64encode(ddata).decode()}
            self._outcome(dev, "sent", ref, item)
            return
        self.sock.sendto(b"\x03", addr)

    def stats(self) -> dict[str, Any]:
        up = [f for f in self.frames if f.direction == "up"]
        down = [f for f in self.frames if f.direction == "down"]
        return dict(
            self.counters,
            bytes_up=sum(f.size for f in up),
            bytes_down=sum(f.size for f in down),
            airtime_up=sum(f.airtime for f in up),
            airtime_down=sum(f.airtime for f in down),
        )
