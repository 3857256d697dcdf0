"""Matrix JSON keys <-> small integers, before CBOR encoding and after decoding.

``compress(obj, table_id)`` walks a JSON-like value (dicts, lists, str, int,
float, bool, None) and replaces every dict key found in the table with its
integer id, at every depth, maps inside lists included. ``expand`` undoes it.
Only keys change; values, including strings that equal a table key, are left
alone. The table is chosen once per session in the handshake (handshake.py
``caps``, bits 0..3), never per request:

=====  ==================  ==========================================
id     name                contents (lowbw/wire/keytables.py)
=====  ==================  ==========================================
1      TABLE_MSC3079_V1    MSC3079 ``cbor_integer_keys_v1``, ids 1..104
2      TABLE_LOWBW_V1      the 24 hottest keys at 0..23 (one CBOR
                           byte each), every MSC3079 key from 24,
                           then more keys /sync uses, up to 177
=====  ==================  ==========================================

The mapping is lossless for any JSON object, because CBOR, unlike JSON,
tells an integer key from a text key:

- a key not in the table stays a text key;
- a key that looks like a number ("5") stays the TEXT "5", never the int 5;
- on expand, an integer key that is not in the table is a DecodeError, and
  so is a key that is neither int nor text (bytes, bool, ...);
- if one map holds both an integer key and the text key it stands for
  (``{3: x, "content": y}`` under table 1), the TEXT key wins and the
  integer key's value is dropped. compress never produces such a map; the
  rule only makes expand deterministic for a peer that does.

Shared with MicroPython.
"""

from lowbw.wire import keytables
from lowbw.wire._compat import const
from lowbw.wire.errors import DecodeError, EncodeError, LimitError

TABLE_MSC3079_V1 = const(1)
TABLE_LOWBW_V1 = const(2)
TABLE_IDS = (TABLE_MSC3079_V1, TABLE_LOWBW_V1)

DEFAULT_MAX_DEPTH = const(32)


class KeyTable:
    """One key table: ``ids`` maps key -> int, ``names`` maps int -> key."""

    def __init__(self, table_id, ids):
        self.table_id = table_id
        self.ids = ids
        names = {}
        for name, i in ids.items():
            names[i] = name
        self.names = names


_tables = {}  # type: dict


def get_table(table_id):
    """The KeyTable for ``table_id``; DecodeError if the id is unknown.

    Tables are built on first use so a device pays RAM only for the one it
    negotiated.
    """
    if table_id is True or table_id is False:
        raise DecodeError("unknown key table id")
    t = _tables.get(table_id)
    if t is not None:
        return t
    if table_id == TABLE_MSC3079_V1:
        ids = keytables.MSC3079_V1
    elif table_id == TABLE_LOWBW_V1:
        ids = {}
        for i, name in enumerate(keytables.LOWBW_V1):
            ids[name] = i
    else:
        raise DecodeError("unknown key table id %r" % (table_id,))
    t = KeyTable(table_id, ids)
    _tables[table_id] = t
    return t


def _compress(obj, ids, depth):
    if isinstance(obj, dict):
        if depth <= 0:
            raise EncodeError("JSON nested too deeply to compress")
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                # An int key would read back as a table key: not losslessly representable.
                raise EncodeError("JSON object keys must be strings")
            out[ids.get(k, k)] = _compress(v, ids, depth - 1)
        return out
    if isinstance(obj, (list, tuple)):
        if depth <= 0:
            raise EncodeError("JSON nested too deeply to compress")
        return [_compress(v, ids, depth - 1) for v in obj]
    return obj


def compress(obj, table_id):
    """``obj`` with every dict key that is in the table replaced by its id."""
    return _compress(obj, get_table(table_id).ids, 64)


def _expand(obj, names, depth):
    if isinstance(obj, dict):
        if depth <= 0:
            raise LimitError("compressed JSON nested too deeply")
        out = {}
        texts = None
        for k, v in obj.items():
            if isinstance(k, str):
                if texts is None:
                    texts = []
                texts.append((k, v))
            elif isinstance(k, int) and k is not True and k is not False:
                name = names.get(k)
                if name is None:
                    raise DecodeError("key id %d is not in the key table" % k)
                out[name] = _expand(v, names, depth - 1)
            else:
                raise DecodeError("map key is neither a key id nor text")
        if texts:
            for k, v in texts:
                out[k] = _expand(v, names, depth - 1)  # text wins over an id for the same key
        return out
    if isinstance(obj, list):
        if depth <= 0:
            raise LimitError("compressed JSON nested too deeply")
        return [_expand(v, names, depth - 1) for v in obj]
    return obj


def expand(obj, table_id, max_depth=DEFAULT_MAX_DEPTH):
    """The JSON-like value ``compress`` was given; DecodeError on unknown ids."""
    return _expand(obj, get_table(table_id).names, max_depth)
