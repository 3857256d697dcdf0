"""Two ``lowbw proxy run`` processes on one fleet, one of them killed with SIGKILL mid-stream.

The scenario is bench/failover.py's (its docstring says what runs and what is
checked): PostgreSQL as the shared registry, the session's Synapse, two proxy
nodes on one UDP port, MicroPython devices behind ``radio_sim relay``
processes at 1 kbit/s. The node holding the most sessions is killed; its
devices make a new handshake on the other node (KK for compact devices, IK
otherwise). Every reading lands exactly once, every command is delivered
once, and the bytes the failover cost each moved device are printed (the
figures in docs/scale-out.md come from here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def test_two_proxies_one_killed_every_reading_and_command_once(
    synapse: Any, appservice: Any, postgres: Any, tmp_path: Path
) -> None:
    from bench.failover import scenario

    report = scenario(synapse, appservice, postgres.new_database(unix_socket=True), tmp_path)
    print("\nscale-out failover: %s" % report)
    moved = [d for d in report["devices"].values() if "failover" in d]
    assert moved and all(d["handshakes"] >= 2 for d in moved)
    # One new handshake's worth of bytes, not a storm: a lost frame, its retry,
    # the handshake and its answer, less the warm exchange they replace.
    assert all(0 < d["failover"]["extra"] < 400 for d in moved), report
