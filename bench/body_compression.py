"""What each body encoding costs, per kind of Matrix body, on a session the dictionary never saw.

A chat session against a real Synapse (``lowbw.testing.synapse.SynapseServer``)
with a server name and users of its own (``chat.bench.invalid``, carol and dave),
NOT the ``example.org`` session dict v1 was built from (scripts/build_dictionary.py):
a room with some history is set up, then carol logs in on a new device and does
what a client does on connecting: initial sync with a timeline-limit-1 filter,
initial sync without a filter, 10 sends (half hers, half dave's), an incremental
sync after each, an empty incremental sync, /messages pages. Every request and
response body is recorded, the set-up's too.

Columns, summed over the bodies of a kind (``n`` of them), in bytes:

* ``json``: compact JSON text (UTF-8), what HTTP carries;
* ``json+z``: that, raw DEFLATE (level 9, no dictionary);
* ``json+zd``: that, with a JSON-text dictionary built by the same builder from
  a fresh ``example.org`` training session (comparison only; ``--no-json-dict``
  skips it and its second Synapse);
* ``cbor``: integer keys (table 2) + CBOR: the link's encoding without DEFLATE;
* ``cbor+z``: that, raw DEFLATE, no dictionary;
* ``cbor+zd``: that, raw DEFLATE with preset dictionary v1 (lowbw/compact);
* ``best``: per body, the shorter of ``cbor`` and ``cbor+zd`` (what a codec
  that flags its choice sends);
* ``zd pays``: in how many of the ``n`` bodies ``cbor+zd`` is shorter than ``cbor``.

Then every body of at most 64 B of CBOR on its own line (send requests and
answers, join and filter bodies, empty objects): whether DEFLATE with the
dictionary pays for it. Last, the separate saving of each technique over the
whole session (integer keys + CBOR against JSON; DEFLATE against CBOR; the
dictionary against plain DEFLATE; choosing per body), and the bodies DEFLATE
did not shrink. ``--json FILE`` writes all of it, every body's sizes included.

Usage: python bench/body_compression.py [--json FILE] [--no-json-dict] [--json-dict-corpus FILE]
       [--dict FILE] [--corpus-in FILE] [--corpus-out FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

from lowbw.compact.dictionary import DICT_V1_ID, dictionary  # noqa: E402

BENCH_SERVER_NAME = "chat.bench.invalid"

SETUP_MESSAGES = (
    "Has anyone seen the delivery schedule?",
    "It moved to Thursday afternoon.",
    "Thanks, noted.",
)
SESSION_MESSAGES = (
    "Morning all",
    "The generator is running again after the storm.",
    "👍",
    "Fuel is at 60 %, enough until Monday.",
    "Can you check the antenna mast on the way back?",
    "Will do",
    "Battery bank voltage 51.2 V",
    "ok",
    "Heading out now, back around 16:00.",
    "Safe trip!",
)


def load_builder() -> ModuleType:
    """scripts/build_dictionary.py, for its Matrix client, encoders and builder."""
    name = "lowbw_scripts_build_dictionary"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "build_dictionary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def capture_bench_session(base_url: str, users: tuple[tuple[str, str], tuple[str, str]]) -> list[Any]:
    """The measured session's bodies (``Body``), set-up included, in order. ``users``: carol, dave."""
    bd = load_builder()
    (carol_name, carol_pw), (dave_name, dave_pw) = users
    record: list[Any] = []
    dave = bd.MatrixClient(base_url, record)
    dave.login(dave_name, dave_pw, "dave's laptop")
    carol_setup = bd.MatrixClient(base_url, record)
    carol_setup.login(carol_name, carol_pw, "carol's phone")
    carol_setup.call("displayname", "PUT", "/profile/%s/displayname" % bd._q(carol_setup.user_id),
                     {"displayname": "Carol"})
    room = dave.call(
        "create_room", "POST", "/createRoom",
        {"name": "Field station", "preset": "private_chat", "invite": [carol_setup.user_id]},
    )["room_id"]
    carol_setup.call("join", "POST", "/join/%s" % bd._q(room), {})
    for i, text in enumerate(SETUP_MESSAGES):
        (dave if i % 2 == 0 else carol_setup).send(room, {"msgtype": "m.text", "body": text})

    # Carol connects a new client: the exchanges that matter on a slow link.
    carol = bd.MatrixClient(base_url, record)
    carol.call("versions", "GET", "/_matrix/client/versions")
    carol.login(carol_name, carol_pw, "lowbw client-proxy")
    filter_id = carol.call("filter", "POST", "/user/%s/filter" % bd._q(carol.user_id),
                           bd.LIMIT_1_FILTER)["filter_id"]
    since = carol.sync("sync_initial_limit1", filter_=filter_id)["next_batch"]
    carol.sync("sync_initial")
    for i, text in enumerate(SESSION_MESSAGES):
        (carol if i % 2 == 0 else dave).send(room, {"msgtype": "m.text", "body": text})
        since = carol.sync("sync_incremental", since=since, filter_=filter_id)["next_batch"]
    carol.sync("sync_incremental_empty", since=since, filter_=filter_id)
    page = carol.messages(room)
    carol.messages(room, from_=page.get("end"))
    return record


COLUMNS = ("json", "json+z", "json+zd", "cbor", "cbor+z", "cbor+zd", "best")
SMALL = 64  # bodies up to this many CBOR bytes are listed one by one


def measure(bd: ModuleType, bodies: list[Any], zdict: bytes, json_dict: bytes | None) -> list[dict[str, Any]]:
    """Every body's size in every column (``kind`` too), in capture order."""
    out = []
    for body in bodies:
        j = bd.json_bytes(body.obj)
        c = bd.wire_bytes(body.obj)
        czd = bd.deflate(c, zdict)
        if bd.inflate(czd, zdict) != c:
            raise AssertionError("DEFLATE with the dictionary did not round-trip a %s body" % body.kind)
        out.append({
            "kind": body.kind,
            "json": len(j),
            "json+z": len(bd.deflate(j)),
            "json+zd": len(bd.deflate(j, json_dict)) if json_dict else 0,
            "cbor": len(c),
            "cbor+z": len(bd.deflate(c)),
            "cbor+zd": len(czd),
            "best": min(len(c), len(czd)),
        })
    return out


def by_kind(sizes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per kind: ``n``, every column's total, and ``zd_pays``: bodies where cbor+zd < cbor."""
    rows: dict[str, dict[str, int]] = {}
    for s in sizes:
        row = rows.setdefault(s["kind"], {"n": 0, **{col: 0 for col in COLUMNS}, "zd_pays": 0})
        row["n"] += 1
        for col in COLUMNS:
            row[col] += s[col]
        row["zd_pays"] += s["cbor+zd"] < s["cbor"]
    return rows


def total(rows: dict[str, dict[str, int]]) -> dict[str, int]:
    return {col: sum(r[col] for r in rows.values()) for col in ("n", *COLUMNS, "zd_pays")}


def print_table(rows: dict[str, dict[str, int]], cols: list[str]) -> None:
    print("%-24s %4s " % ("body kind", "n") + " ".join("%8s" % c for c in cols) + "  zd pays")
    for kind, row in sorted(rows.items(), key=lambda kv: -kv[1]["json"]):
        print("%-24s %4d " % (kind, row["n"]) + " ".join("%8d" % row[c] for c in cols)
              + "  %d/%d" % (row["zd_pays"], row["n"]))
    t = total(rows)
    print("%-24s %4d " % ("TOTAL", t["n"]) + " ".join("%8d" % t[c] for c in cols)
          + "  %d/%d" % (t["zd_pays"], t["n"]))


def print_small(sizes: list[dict[str, Any]], cols: list[str]) -> None:
    """Small bodies one by one (identical rows counted): where DEFLATE costs more than it saves."""
    counts: dict[tuple[Any, ...], int] = {}
    for s in sizes:
        if s["cbor"] <= SMALL:
            key = (s["cbor"], s["kind"], *(s[c] for c in cols))
            counts[key] = counts.get(key, 0) + 1
    print("bodies of at most %d B of CBOR, one by one:" % SMALL)
    print("%-24s %4s " % ("body kind", "n") + " ".join("%8s" % c for c in cols) + "  cbor+zd")
    for key in sorted(counts):
        row = dict(zip(cols, key[2:], strict=True))
        gain = row["cbor"] - row["cbor+zd"]
        verdict = "pays" if gain > 0 else "LOSES" if gain < 0 else "even"
        print("%-24s %4d " % (key[1], counts[key]) + " ".join("%8d" % v for v in key[2:]) + "  " + verdict)


def savings(sizes: list[dict[str, Any]], with_json_dict: bool) -> dict[str, Any]:
    """Each technique's own saving over the whole session, and the bodies where it did not pay."""
    t = total(by_kind(sizes))

    def pct(before: int, after: int) -> float:
        return round(100.0 * (before - after) / before, 1) if before else 0.0

    out: dict[str, Any] = {
        "integer keys + CBOR vs JSON": pct(t["json"], t["cbor"]),
        "DEFLATE (no dict) on CBOR": pct(t["cbor"], t["cbor+z"]),
        "dictionary vs DEFLATE without dict, on CBOR": pct(t["cbor+z"], t["cbor+zd"]),
        "choosing per body vs always cbor+zd": pct(t["cbor+zd"], t["best"]),
        "all of it (best) vs JSON": pct(t["json"], t["best"]),
        "DEFLATE (no dict) on JSON": pct(t["json"], t["json+z"]),
    }
    if with_json_dict:
        out["JSON-text dict vs DEFLATE without dict, on JSON"] = pct(t["json+z"], t["json+zd"])
        out["cbor+zd vs json+zd"] = pct(t["json+zd"], t["cbor+zd"])
    no_dict_pays = [s["cbor"] for s in sizes if s["cbor+z"] < s["cbor"]]
    dict_loses = [s["cbor"] for s in sizes if s["cbor+zd"] >= s["cbor"]]
    out["smallest body (cbor B) that DEFLATE without dict shrank"] = min(no_dict_pays, default=None)
    out["bodies (cbor B) that DEFLATE with the dictionary did not shrink"] = sorted(dict_loses)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--no-json-dict", action="store_true",
                        help="skip the JSON-text dictionary comparison (and its second Synapse)")
    parser.add_argument("--json-dict-corpus", type=Path,
                        help="build the JSON-text dictionary from this saved training capture "
                             "(scripts/build_dictionary.py --corpus-out) instead of a fresh one")
    parser.add_argument("--dict", type=Path, help="measure this dictionary instead of v1 (a candidate)")
    parser.add_argument("--corpus-in", type=Path, help="measure this saved bench capture; no Synapse")
    parser.add_argument("--corpus-out", type=Path, help="save the bench capture (JSON) here")
    args = parser.parse_args(argv)
    bd = load_builder()
    zdict = args.dict.read_bytes() if args.dict else dictionary(DICT_V1_ID)

    if args.corpus_in:
        bodies = bd.load_corpus(args.corpus_in)
    else:
        print("capturing the bench session (%s)..." % BENCH_SERVER_NAME, file=sys.stderr)
        bodies = bd.capture_from_synapse(BENCH_SERVER_NAME, capture_bench_session, ("carol", "dave"))
    if args.corpus_out:
        bd.save_corpus(args.corpus_out, bodies)
    json_dict: bytes | None = None
    if not args.no_json_dict:
        if args.json_dict_corpus:
            training = bd.load_corpus(args.json_dict_corpus)
        else:
            print("capturing a training session (%s) for the JSON-text dictionary..."
                  % bd.TRAINING_SERVER_NAME, file=sys.stderr)
            training = bd.capture_from_synapse(bd.TRAINING_SERVER_NAME)
        json_dict = bd.build_dictionary(training, bd.json_bytes, bd.skeleton_json)

    sizes = measure(bd, bodies, zdict, json_dict)
    cols = [c for c in COLUMNS if json_dict is not None or c != "json+zd"]
    rows = by_kind(sizes)
    print_table(rows, cols)
    print()
    print_small(sizes, cols)
    summary = savings(sizes, json_dict is not None)
    print()
    for key, value in summary.items():
        print("%s: %s%s" % (key, value, " %" if isinstance(value, float) else ""))
    if args.json:
        result = {
            "server_name": BENCH_SERVER_NAME,
            "dict": str(args.dict) if args.dict else "v1",
            "dict_bytes": len(zdict),
            "json_dict_bytes": len(json_dict) if json_dict is not None else None,
            "kinds": rows,
            "total": total(rows),
            "bodies": sizes,
            "savings_percent": summary,
        }
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
