"""Sensor drivers: the interface every driver implements, and ``load``.

A driver measures a fixed set of fields. ``FIELDS`` (class attribute) lists
every field it can read as ``(name, unit, scale)``; a value v of a field with
scale s means v * 10**-s, so drivers return exact scaled integers (the device
config's slots use the same convention, and the proxy renders exact decimal
strings). A driver built with ``fields=[names]`` reads only those, in that
order; ``scales={name: s}`` lowers a field's scale (rounding half away from
zero), which saves bytes on the air: a BME280 reading at its native
resolution is ``[0, 2508, 100653, 5500]`` (13 B of CBOR), at scales 1/1/0
(0.1 °C, 0.1 hPa, 1 %: still finer than the chip's accuracy) it is ``[0,
251, 10065, 55]`` (9 B). ``fields`` (instance attribute) is the result.

``read()`` returns one value per selected field: an int, a float, or None for
a value the sensor could not give. A driver raises OSError when the bus or the
chip fails as a whole; the application then sends nulls, so a dead sensor is
visible in the room rather than silent.

``schema(slot_name)`` gives the ``--schema`` argument of ``lowbw device
enroll`` matching the selection, e.g. ``climate=temperature:°C:2,humidity:%:2``.
"""

# Drivers the config may name; imported only when used, so a board pays RAM
# for its own sensor only.
DRIVERS = ("bme280", "ds18b20", "simulated")


def _scale_down(v, d):
    if v is None or d == 1:
        return v
    if isinstance(v, float):
        return v / d
    if v >= 0:
        return (v + d // 2) // d
    return -((-v + d // 2) // d)


class Sensor:
    FIELDS = ()

    def __init__(self, fields=None, scales=None):
        names = [f[0] for f in self.FIELDS]
        if fields is None:
            fields = names
        pick = []
        for name in fields:
            if name not in names:
                raise ValueError("sensor %s has no field %r (it has %s)"
                                 % (self.__class__.__name__, name, ", ".join(names)))
            pick.append(names.index(name))
        if not pick:
            raise ValueError("sensor needs at least one field")
        self._pick = pick
        out = []
        div = []
        for i in pick:
            name, unit, native = self.FIELDS[i]
            s = native if not scales else scales.get(name, native)
            if not isinstance(s, int) or s is True or s is False or s > native or s < native - 9:
                raise ValueError("sensor field %s: scale must be an integer in %d..%d"
                                 % (name, native - 9, native))
            out.append((name, unit, s))
            div.append(10 ** (native - s))
        self.fields = tuple(out)
        self._div = div

    def measure(self):
        """Every field of FIELDS, in order, at the native scales (drivers implement this)."""
        raise NotImplementedError

    def read(self):
        values = self.measure()
        div = self._div
        return [_scale_down(values[i], div[k]) for k, i in enumerate(self._pick)]

    def schema(self, slot_name):
        parts = ["%s:%s:%d" % f for f in self.fields]
        return "%s=%s" % (slot_name, ",".join(parts))


def load(spec, board):
    """A driver from the config's ``sensor`` object (``driver`` names it)."""
    name = spec.get("driver")
    if name not in DRIVERS:
        raise ValueError("sensor.driver: expected one of %s, got %r" % (", ".join(DRIVERS), name))
    mod = __import__("firmware.sensors." + name, None, None, ["open"])
    return mod.open(spec, board)
