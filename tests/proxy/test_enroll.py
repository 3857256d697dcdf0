"""Enrollment against the session's real Synapse: appservice mode and token mode, through the CLI.

The proxy directory comes from the ``proxy_config_path`` / ``token_proxy_config_path``
fixtures (conftest.py): written by ``lowbw proxy init``'s own code with the tokens
Synapse loaded.  Results are checked the way a stock client sees them, as an
ordinary user over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lowbw.cli import main
from lowbw.proxy import keyfile
from lowbw.proxy.config import load
from lowbw.proxy.enroll import (
    EnrollError,
    check_device_name,
    enroll,
    load_schema_file,
    parse_schema_spec,
)
from lowbw.proxy.registry import Registry
from lowbw.testing.synapse import AppserviceRegistration, SynapseServer
from lowbw.wire import crypto

from .conftest import MatrixUser

_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(
    synapse: SynapseServer, method: str, path: str, token: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(
        synapse.url + path, data=json.dumps(body).encode() if body is not None else None, method=method
    )
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    try:
        with _opener.open(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def secrets_in(config_path: Path, *extra: str) -> list[str]:
    """Every secret an output must never show."""
    cfg = load(config_path)
    found = [cfg.read_private_key().hex(), *extra]
    if cfg.appservice is not None:
        found += [cfg.appservice.as_token, cfg.appservice.hs_token]
    if cfg.homeserver.registration_shared_secret:
        found.append(cfg.homeserver.registration_shared_secret)
    return found


def new_name() -> str:
    return "s%s" % secrets.token_hex(4)


def test_enroll_new_room_appservice(
    synapse: SynapseServer,
    appservice: AppserviceRegistration,
    proxy_config_path: str,
    matrix_user: MatrixUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = Path(proxy_config_path)
    name = new_name()
    code, output = run_cli(
        [
            "device", "enroll", "--config", str(config), name, "--room", "new",
            "--invite", matrix_user.user_id,
            "--schema", "temperature:°C:1",
            "--schema", "climate=temperature:°C:1,humidity:%",
            "--event-type", "m.room.message", "--event-type", "org.lowbw.reading",
            "--permission", "create_room",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, output
    cfg = load(config)

    # The device config: fields, keys, mode 0600.
    dev_path = cfg.dir / "devices" / ("%s.json" % name)
    assert stat.S_IMODE(dev_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(dev_path.parent.stat().st_mode) == 0o700
    dev = json.loads(dev_path.read_text(encoding="utf-8"))
    assert set(dev) == {
        "version", "name", "proxy", "device_private_key", "caps", "profile", "link_bps", "room_id", "user_id",
        "slots",
    }  # fmt: skip
    # A 1 Mbit/s link (the test proxy's): the standard profile by default.
    assert dev["profile"] == "standard"
    user_id = "@lowbw_%s:lowbw.test" % name
    assert dev["version"] == 1 and dev["name"] == name and dev["user_id"] == user_id
    assert dev["proxy"] == {
        "host": "127.0.0.1",
        "port": cfg.proxy.port,
        "public_key": cfg.read_public_key().hex(),
    }
    assert dev["caps"] == 2 and dev["link_bps"] == load(str(config)).proxy.link_bps
    assert dev["slots"] == [
        {"name": "temperature", "fields": [{"name": "temperature", "unit": "°C", "scale": 1}]},
        {
            "name": "climate",
            "fields": [
                {"name": "temperature", "unit": "°C", "scale": 1},
                {"name": "humidity", "unit": "%", "scale": 0},
            ],
        },
    ]
    device_priv = bytes.fromhex(dev["device_private_key"])
    room_id = dev["room_id"]

    # The registry holds the matching public key, and nothing secret for appservice mode.
    with Registry(cfg.proxy.registry) as reg:
        rec = reg.device(name)
        assert rec is not None
        assert rec.public_key == crypto.x25519_base(device_priv)
        assert reg.device_by_key(rec.public_key) == rec
    assert rec.user_id == user_id and rec.access_token is None
    assert rec.rooms == [room_id]
    assert rec.event_types == ["m.room.message", "org.lowbw.reading"]
    assert rec.permissions == ["create_room"]
    assert rec.slots == dev["slots"]

    # As the ordinary user: invited, can join, and the device user is a member.
    status, _ = call(synapse, "POST", "/_matrix/client/v3/join/%s" % q(room_id), matrix_user.access_token, {})
    assert status == 200
    status, members = call(
        synapse, "GET", "/_matrix/client/v3/rooms/%s/joined_members" % q(room_id), matrix_user.access_token
    )
    assert status == 200
    assert set(members["joined"]) == {user_id, matrix_user.user_id}
    assert members["joined"][user_id]["display_name"] == name

    # list shows it, revoke marks it, and list shows that.
    code, listing = run_cli(["device", "list", "--config", str(config)], capsys)
    assert code == 0 and name in listing and user_id in listing and "active" in listing
    code, listing_json = run_cli(["device", "list", "--config", str(config), "--json"], capsys)
    rows = {row["name"]: row for row in json.loads(listing_json)}
    assert rows[name]["rooms"] == [room_id] and rows[name]["revoked"] is False
    assert "access_token" not in rows[name]
    code, revoked = run_cli(["device", "revoke", "--config", str(config), name], capsys)
    assert code == 0 and "revoked" in revoked
    with Registry(cfg.proxy.registry) as reg:
        after = reg.device(name)
        assert after is not None and after.revoked and reg.device_by_key(rec.public_key) is None
    code, listing = run_cli(["device", "list", "--config", str(config)], capsys)
    assert "revoked" in listing

    # Enrolling the same name again is refused before anything is touched.
    code, again = run_cli(
        ["device", "enroll", "--config", str(config), name, "--room", "new", "--schema", "t"], capsys
    )
    assert code == 1 and "already enrolled (revoked)" in again

    for text in (output, listing, listing_json, revoked, again):
        for secret in secrets_in(config, dev["device_private_key"]):
            assert secret not in text


def test_enroll_joins_an_existing_room_by_alias(
    synapse: SynapseServer,
    proxy_config_path: str,
    matrix_user: MatrixUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alias_local = "lowbw-%s" % secrets.token_hex(4)
    status, created = call(
        synapse,
        "POST",
        "/_matrix/client/v3/createRoom",
        matrix_user.access_token,
        {"preset": "public_chat", "room_alias_name": alias_local},
    )
    assert status == 200
    name = new_name()
    out = Path(proxy_config_path).parent / "elsewhere" / "dev.json"
    code, output = run_cli(
        [
            "device", "enroll", "--config", proxy_config_path, name, "--room", "#%s:lowbw.test" % alias_local,
            "--out", str(out), "--proxy-host", "192.0.2.7", "--proxy-port", "6000", "--schema", "t",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, output
    dev = json.loads(out.read_text())
    assert dev["room_id"] == created["room_id"]
    assert dev["proxy"]["host"] == "192.0.2.7" and dev["proxy"]["port"] == 6000
    assert dev["slots"] == [{"name": "t", "fields": [{"name": "t", "unit": "", "scale": 0}]}]
    status, members = call(
        synapse,
        "GET",
        "/_matrix/client/v3/rooms/%s/joined_members" % q(created["room_id"]),
        matrix_user.access_token,
    )
    assert "@lowbw_%s:lowbw.test" % name in members["joined"]
    for secret in secrets_in(Path(proxy_config_path), dev["device_private_key"]):
        assert secret not in output


def test_enroll_failures_leave_nothing_behind(
    synapse: SynapseServer, proxy_config_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load(proxy_config_path)
    name = new_name()
    # A private room nobody invited the device to.
    code, output = run_cli(
        ["device", "enroll", "--config", proxy_config_path, name, "--room", "!nosuchroom:lowbw.test",
         "--schema", "t"],
        capsys,
    )
    assert code == 1
    assert "joining !nosuchroom:lowbw.test" in output and "Traceback" not in output
    with Registry(cfg.proxy.registry) as reg:
        assert reg.device(name) is None
    assert not (cfg.devices_dir / ("%s.json" % name)).exists()
    # An existing device config is never overwritten.
    target = cfg.dir / "taken.json"
    target.write_text("{}")
    code, output = run_cli(
        ["device", "enroll", "--config", proxy_config_path, name, "--room", "new", "--out", str(target),
         "--schema", "t"],
        capsys,
    )
    assert code == 1 and "exists" in output
    assert target.read_text() == "{}"


def test_enroll_token_mode(
    synapse: SynapseServer,
    token_proxy_config_path: str,
    matrix_user: MatrixUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = Path(token_proxy_config_path)
    name = new_name()
    code, output = run_cli(
        [
            "device", "enroll", "--config", str(config), name, "--room", "new",
            "--invite", matrix_user.user_id, "--schema", "pressure:hPa:1",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, output
    cfg = load(config)
    dev = json.loads((cfg.devices_dir / ("%s.json" % name)).read_text())
    user_id = "@tok_%s:lowbw.test" % name
    assert dev["user_id"] == user_id
    with Registry(cfg.proxy.registry) as reg:
        rec = reg.device(name)
    assert rec is not None and rec.access_token
    assert rec.access_token not in repr(rec)
    # The stored token is the device user's own, and it is in the room.
    status, who = call(synapse, "GET", "/_matrix/client/v3/account/whoami", rec.access_token)
    assert status == 200 and who["user_id"] == user_id
    status, joined = call(synapse, "GET", "/_matrix/client/v3/joined_rooms", rec.access_token)
    assert joined["joined_rooms"] == [dev["room_id"]]
    status, _ = call(
        synapse, "POST", "/_matrix/client/v3/join/%s" % q(dev["room_id"]), matrix_user.access_token, {}
    )
    assert status == 200

    code, listing = run_cli(["device", "list", "--config", str(config), "--json"], capsys)
    assert json.loads(listing)[0]["token_mode"] is True
    for text in (output, listing):
        for secret in secrets_in(config, dev["device_private_key"], rec.access_token):
            assert secret not in text

    # The same user cannot be taken over by a second enrollment.
    with Registry(cfg.proxy.registry) as reg:
        assert reg.revoke(name)
    for suffix in ("", "-wal", "-shm"):
        Path(str(cfg.proxy.registry) + suffix).unlink(missing_ok=True)
    code, output = run_cli(
        [
            "device",
            "enroll",
            "--config",
            str(config),
            name,
            "--room",
            "new",
            "--schema",
            "t",
            "--out",
            str(config.parent / "2.json"),
        ],
        capsys,
    )
    assert code == 1 and "already exists" in output


def test_token_mode_without_shared_secret(
    synapse: SynapseServer, token_proxy_config_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = Path(token_proxy_config_path)
    config.write_text(
        config.read_text().replace(
            'registration_shared_secret = "%s"' % synapse.registration_shared_secret,
            'registration_shared_secret = ""',
        )
    )
    code, output = run_cli(
        ["device", "enroll", "--config", str(config), new_name(), "--room", "new", "--schema", "t"], capsys
    )
    assert code == 1 and "registration_shared_secret" in output
    # A wrong secret: the homeserver refuses, the message says why, the secret is not shown.
    config.write_text(
        config.read_text().replace(
            'registration_shared_secret = ""', 'registration_shared_secret = "WRONGSECRET"'
        )
    )
    code, output = run_cli(
        ["device", "enroll", "--config", str(config), new_name(), "--room", "new", "--schema", "t"], capsys
    )
    assert code == 1 and "403" in output and "WRONGSECRET" not in output


def test_enroll_reuses_a_leftover_appservice_user(synapse: SynapseServer, proxy_config_path: str) -> None:
    """An enrollment interrupted after the user was created can be run again."""
    cfg = load(proxy_config_path)
    name = new_name()

    async def twice() -> None:
        from lowbw.proxy.homeserver import Homeserver

        assert cfg.appservice is not None
        async with Homeserver(cfg.homeserver.url) as hs:
            await hs.register_appservice_user(cfg.user_localpart(name), cfg.appservice.as_token)
        result = await enroll(cfg, name, "new", slots=[parse_schema_spec("t")])
        assert result.record.user_id == cfg.user_id(name) and result.created_room

    asyncio.run(twice())


def test_enroll_through_the_console_entry_point(synapse: SynapseServer, proxy_config_path: str) -> None:
    """`python -m lowbw`, a real process: exit 0, nothing secret on stdout or stderr."""
    name = new_name()
    proc = subprocess.run(
        [sys.executable, "-m", "lowbw", "device", "enroll", "--config", proxy_config_path, name,
         "--room", "new", "--schema", "t"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cfg = load(proxy_config_path)
    dev = json.loads((cfg.devices_dir / ("%s.json" % name)).read_text())
    for secret in secrets_in(Path(proxy_config_path), dev["device_private_key"]):
        assert secret not in proc.stdout + proc.stderr


def test_enroll_profile_flag_and_its_default(synapse: SynapseServer, proxy_config_path: str) -> None:
    """`--profile compact` is recorded in the registry and the device config; without
    the flag a slow link gets the compact profile, a fast one the standard."""
    from lowbw.device import config as device_config
    from lowbw.proxy.enroll import check_profile, default_profile

    name = new_name()
    proc = subprocess.run(
        [sys.executable, "-m", "lowbw", "device", "enroll", "--config", proxy_config_path, name,
         "--room", "new", "--schema", "t", "--profile", "compact"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "link profile compact" in proc.stdout
    cfg = load(proxy_config_path)
    path = cfg.devices_dir / ("%s.json" % name)
    assert json.loads(path.read_text())["profile"] == "compact"
    assert device_config.load(str(path)).compact
    with Registry(cfg.proxy.registry) as reg:
        assert reg.device(name).profile == "compact"
    assert default_profile(100) == "compact" and default_profile(9_600) == "compact"
    assert default_profile(10_000) == "standard" and default_profile(1_000_000) == "standard"
    assert check_profile(None, 100) == "compact" and check_profile("standard", 100) == "standard"
    with pytest.raises(EnrollError):
        check_profile("fast", 100)
    bad = subprocess.run(
        [sys.executable, "-m", "lowbw", "device", "enroll", "--config", proxy_config_path, new_name(),
         "--room", "new", "--schema", "t", "--profile", "fast"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "--profile" in bad.stderr


# -- schema specs and names (no homeserver) -------------------------------------------


def test_schema_specs() -> None:
    assert parse_schema_spec("temperature") == {
        "name": "temperature",
        "fields": [{"name": "temperature", "unit": "", "scale": 0}],
    }
    assert parse_schema_spec("t:°C:2") == {"name": "t", "fields": [{"name": "t", "unit": "°C", "scale": 2}]}
    assert parse_schema_spec("count::3")["fields"] == [{"name": "count", "unit": "", "scale": 3}]
    assert parse_schema_spec("climate=temperature:°C:1,humidity:%") == {
        "name": "climate",
        "fields": [
            {"name": "temperature", "unit": "°C", "scale": 1},
            {"name": "humidity", "unit": "%", "scale": 0},
        ],
    }


@pytest.mark.parametrize(
    "spec",
    ["", "a:b:c:d", "t:°C:x", "t:°C:-1", "t:°C:19", "c=", "c=a,a", "=a", "c=a,,b", "a b", "t:\x07",
     "c=" + ",".join("f%d" % i for i in range(17))],
)  # fmt: skip
def test_bad_schema_specs(spec: str) -> None:
    with pytest.raises(EnrollError):
        parse_schema_spec(spec)


def test_schema_file_lines_and_json(tmp_path: Path) -> None:
    lines = tmp_path / "schema.txt"
    lines.write_text("# sensors\ntemperature:°C:1\n\nclimate=t:°C:1,h:%  # two fields\n", encoding="utf-8")
    assert [s["name"] for s in load_schema_file(lines)] == ["temperature", "climate"]
    as_json = tmp_path / "schema.json"
    slots = [{"name": "p", "fields": [{"name": "p", "unit": "hPa", "scale": 1}]}]
    as_json.write_text(json.dumps({"slots": slots}))
    assert load_schema_file(as_json) == slots
    as_json.write_text(json.dumps([{"name": "p", "fields": [{"name": "p", "scale": True}]}]))
    with pytest.raises(EnrollError):
        load_schema_file(as_json)
    as_json.write_text("[not json")
    with pytest.raises(EnrollError, match="not valid JSON"):
        load_schema_file(as_json)
    with pytest.raises(EnrollError, match="not found"):
        load_schema_file(tmp_path / "missing")


@pytest.mark.parametrize("name", ["", "Sensor", "a.b", "a/b", "../x", "-a", "x" * 33, "a b", "é"])
def test_bad_device_names(name: str) -> None:
    with pytest.raises(EnrollError):
        check_device_name(name)


def test_enroll_refuses_to_invite_a_user_who_does_not_exist(
    synapse: SynapseServer,
    proxy_config_path: str,
    matrix_user: MatrixUser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = load(proxy_config_path)
    name = new_name()
    ghost = "@nobody_%s:lowbw.test" % secrets.token_hex(4)
    code, output = run_cli(
        ["device", "enroll", "--config", proxy_config_path, name, "--room", "new", "--schema", "t",
         "--invite", matrix_user.user_id, "--invite", ghost],
        capsys,
    )
    assert code == 1, output
    assert "cannot invite %s: no such user on the homeserver" % ghost in output
    with Registry(cfg.proxy.registry) as reg:
        assert reg.device(name) is None
    assert not (cfg.devices_dir / ("%s.json" % name)).exists()


def test_local_checks_come_before_the_homeserver(tmp_path: Path) -> None:
    """Bad input fails without any request: the homeserver URL here answers nothing."""
    from lowbw.proxy.config import write_default

    cfg = write_default(tmp_path / "p", "http://127.0.0.1:9", bind="0.0.0.0").config

    def fails(match: str, **kw: Any) -> None:
        args = {"name": "ok", "room": "new", "slots": [parse_schema_spec("t")], **kw}
        with pytest.raises(EnrollError, match=match):
            asyncio.run(enroll(cfg, **args))

    fails("--proxy-host")
    fails("--invite works with --room new only", room="#a:b", invite=["@u:x"], proxy_host="h")
    fails("not a Matrix user ID", invite=["bob"], proxy_host="h")
    fails("unknown permission", permissions=["admin"], proxy_host="h")
    fails("not an event type", event_types=["a b"], proxy_host="h")
    fails("room 'lobby'", room="lobby", proxy_host="h")
    fails("given twice", slots=[parse_schema_spec("t"), parse_schema_spec("t")], proxy_host="h")
    fails("proxy port 0", proxy_host="h", proxy_port=0)
    # No --schema: a device without slots could never send a reading.
    fails("no reading slots: give at least one --schema", slots=[], proxy_host="h")
    assert not cfg.proxy.registry.exists()
    # Past the local checks, an unreachable homeserver is named as such (not "is appservice.yaml loaded?").
    with pytest.raises(EnrollError) as exc:
        asyncio.run(enroll(cfg, "ok", "new", slots=[parse_schema_spec("t")], proxy_host="h"))
    assert exc.value.message.startswith("the homeserver is unreachable at http://127.0.0.1:9 (")
    assert "cannot connect to 127.0.0.1:9" in exc.value.message and "appservice.yaml" not in exc.value.message
    assert keyfile.read_public_key(cfg.proxy.public_key)
