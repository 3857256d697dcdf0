"""lowbw.proxy.config and lowbw.proxy.keyfile: what `lowbw proxy init` writes, and loading it back."""

from __future__ import annotations

import os
import re
import stat
import tomllib
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lowbw.proxy import keyfile
from lowbw.proxy.config import (
    ConfigError,
    ProxyConfig,
    load,
    server_name_from_url,
    split_host_port,
    toml_string,
    write_default,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_every_file_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "proxy"
    result = write_default(target, "https://matrix.example.org:8448", server_name="example.org")
    assert result.created_dir and not result.kept_registry
    assert mode_of(target) == 0o700
    assert mode_of(target / "proxy.key") == 0o600
    assert mode_of(target / "proxy.pub") == 0o644
    assert mode_of(target / "proxy.toml") == 0o600
    assert mode_of(target / "appservice.yaml") == 0o600
    assert sorted(p.name for p in target.iterdir()) == [
        "appservice.yaml",
        "proxy.key",
        "proxy.pub",
        "proxy.toml",
    ]
    assert sorted(p.name for p, _ in result.written) == sorted(p.name for p in target.iterdir())

    priv = keyfile.read_private_key(target / "proxy.key")
    assert keyfile.read_public_key(target / "proxy.pub") == keyfile.public_from_private(priv)

    cfg = load(target / "proxy.toml")
    assert cfg == result.config
    assert cfg.proxy.bind == "127.0.0.1" and cfg.proxy.port == 5683 and cfg.proxy.link_bps == 100
    assert cfg.proxy.registry == target / "registry.sqlite3"
    assert cfg.homeserver.url == "https://matrix.example.org:8448"
    assert cfg.homeserver.server_name == "example.org"
    assert cfg.homeserver.verify_tls is True and cfg.mode == "appservice"
    assert cfg.user_id("sensor1") == "@lowbw_sensor1:example.org"
    assert cfg.read_private_key() == priv
    assert cfg.appservice is not None
    assert len(cfg.appservice.as_token) >= 43 and len(cfg.appservice.hs_token) >= 43  # 32 bytes urlsafe
    assert cfg.appservice.as_token != cfg.appservice.hs_token
    assert cfg.appservice.listen_host == "127.0.0.1" and cfg.appservice.listen_port == 9009


def test_appservice_registration_is_what_synapse_expects(tmp_path: Path) -> None:
    result = write_default(
        tmp_path / "p", "https://hs.example.org", server_name="example.org", appservice_listen="10.0.0.5:9100"
    )
    cfg = result.config
    assert cfg.appservice is not None
    reg = yaml.safe_load((tmp_path / "p" / "appservice.yaml").read_text())
    assert reg == {
        "id": "lowbw",
        "url": "http://10.0.0.5:9100",
        "as_token": cfg.appservice.as_token,
        "hs_token": cfg.appservice.hs_token,
        "sender_localpart": "lowbw",
        "rate_limited": False,
        "namespaces": {
            "users": [{"exclusive": True, "regex": r"@lowbw_.*:example\.org"}],
            "aliases": [],
            "rooms": [],
        },
    }
    regex = re.compile(reg["namespaces"]["users"][0]["regex"])
    assert regex.match("@lowbw_sensor1:example.org")
    assert not regex.match("@alice:example.org")
    assert not regex.match("@lowbw_sensor1:exampleXorg")


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    target = tmp_path / "p"
    first = write_default(target, "http://127.0.0.1:8008")
    old_key = (target / "proxy.key").read_text()
    with pytest.raises(ConfigError, match="refusing to overwrite .*--force"):
        write_default(target, "http://127.0.0.1:8008")
    assert (target / "proxy.key").read_text() == old_key
    (target / "registry.sqlite3").write_bytes(b"")
    # A key file someone loosened is tightened again when replaced.
    os.chmod(target / "proxy.key", 0o644)
    second = write_default(target, "http://127.0.0.1:8008", force=True)
    assert second.kept_registry and not second.created_dir
    assert (target / "proxy.key").read_text() != old_key
    assert mode_of(target / "proxy.key") == 0o600
    assert first.config.appservice is not None and second.config.appservice is not None
    assert first.config.appservice.as_token != second.config.appservice.as_token


def test_token_mode_has_no_appservice(tmp_path: Path) -> None:
    result = write_default(tmp_path / "p", "http://127.0.0.1:8008", mode="token")
    assert not (tmp_path / "p" / "appservice.yaml").exists()
    cfg = load(result.config.path)
    assert cfg.mode == "token" and cfg.appservice is None
    assert cfg.homeserver.registration_shared_secret == ""


def test_server_name_defaults_to_the_url_host() -> None:
    assert server_name_from_url("https://matrix.example.org") == "matrix.example.org"
    assert server_name_from_url("http://127.0.0.1:8008") == "127.0.0.1"
    assert server_name_from_url("http://[::1]:8008") == "[::1]"
    with pytest.raises(ConfigError):
        server_name_from_url("ftp://x")
    with pytest.raises(ConfigError):
        server_name_from_url("http://user:pw@x")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "bogus"},
        {"server_name": "bad name"},
        {"user_prefix": "Caps_"},
        {"appservice_listen": "nohost"},
        {"appservice_listen": "h:99999"},
        {"port": 70000},
        {"link_bps": 0},
    ],
)
def test_init_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        write_default(tmp_path / "p", "http://127.0.0.1:8008", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "p").exists()


def test_split_host_port() -> None:
    assert split_host_port("127.0.0.1:9009", "x") == ("127.0.0.1", 9009)
    assert split_host_port("[::1]:9009", "x") == ("::1", 9009)
    for bad in ("::1:9009", "[::1]9009", ":80", "h:", "h:0", "h:x"):
        with pytest.raises(ConfigError, match="x"):
            split_host_port(bad, "x")


def test_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg_path = tmp_path / "etc" / "proxy.toml"
    cfg_path.parent.mkdir()
    cfg_path.write_text(
        '[proxy]\nprivate_key = "keys/p.key"\nregistry = "/var/lib/lowbw/r.sqlite3"\n'
        '[homeserver]\nurl = "http://127.0.0.1:8008"\nmode = "token"\n'
    )
    cfg = load(cfg_path)
    assert cfg.proxy.private_key == tmp_path / "etc" / "keys" / "p.key"
    assert cfg.proxy.registry == Path("/var/lib/lowbw/r.sqlite3")
    assert cfg.proxy.public_key == tmp_path / "etc" / "proxy.pub"
    assert cfg.homeserver.server_name == "127.0.0.1"
    # Round trip through the writer.
    cfg_path.write_text(cfg.to_toml())
    assert load(cfg_path) == cfg


BASE = (
    '[homeserver]\nurl = "http://127.0.0.1:8008"\n'
    '[appservice]\nas_token = "AS_SECRET_1"\nhs_token = "HS_SECRET_2"\n'
)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("this is not toml", "not valid TOML"),
        (BASE + "[extra]\n", "unknown table.*extra"),
        (BASE.replace("[appservice]", "[appservice]\nprot = 1"), r"\[appservice\] has unknown key.*prot"),
        ('[proxy]\nport = "5683"\n' + BASE, r"\[proxy\] port must be an integer"),
        ("[proxy]\nport = true\n" + BASE, r"\[proxy\] port must be an integer"),
        ("[proxy]\nport = 65536\n" + BASE, r"\[proxy\] port must be between"),
        ("[proxy]\nlink_bps = 0\n" + BASE, r"\[proxy\] link_bps must be between"),
        ('[proxy]\nbind = ""\n' + BASE, r"\[proxy\] bind must not be empty"),
        ('[homeserver]\nmode = "token"\n', r"\[homeserver\] url is missing"),
        ('[homeserver]\nurl = "gopher://x"\nmode = "token"\n', r"\[homeserver\] url must be http"),
        (BASE.replace("[appservice]", 'mode = "x"\n[appservice]'), r"\[homeserver\] mode must be one of"),
        (BASE.replace("[appservice]", "verify_tls = 1\n[appservice]"), r"verify_tls must be true or false"),
        (BASE.replace("[appservice]", 'user_prefix = "A"\n[appservice]'), r"user_prefix"),
        (BASE.split("[appservice]")[0], r"\[appservice\] table is missing"),
        (BASE.replace('as_token = "AS_SECRET_1"\n', ""), r"\[appservice\] as_token is missing"),
        (BASE + 'listen = "nowhere"\n', r"\[appservice\] listen must be HOST:PORT"),
        ("[proxy]\n", r"\[homeserver\] table is missing"),
        ("proxy = 3\n" + BASE, r"\[proxy\] must be a table"),
    ],
)
def test_load_errors_name_the_key(tmp_path: Path, text: str, expect: str) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expect) as info:
        load(path)
    assert str(path) in str(info.value)
    assert "SECRET" not in str(info.value)


def test_load_missing_unreadable_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found.*lowbw proxy init"):
        load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load(tmp_path)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError):
        load(binary)


def test_defaults_and_secrets_hidden_from_repr(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(BASE.replace("[appservice]", 'registration_shared_secret = "RSS_SECRET_3"\n[appservice]'))
    cfg = ProxyConfig.load(path)
    assert cfg.proxy.port == 5683 and cfg.proxy.bind == "127.0.0.1" and cfg.appservice is not None
    assert cfg.appservice.listen == "127.0.0.1:9009" and cfg.appservice.url == "http://127.0.0.1:9009"
    assert cfg.homeserver.registration_shared_secret == "RSS_SECRET_3"
    assert "SECRET" not in repr(cfg)


@given(st.text(max_size=40))
def test_toml_strings_round_trip(value: str) -> None:
    assert tomllib.loads("k = " + toml_string(value))["k"] == value


# -- key files ------------------------------------------------------------------------


def test_key_files_round_trip_and_modes(tmp_path: Path) -> None:
    priv, pub = keyfile.generate_keypair()
    assert len(priv) == 32 and pub == keyfile.public_from_private(priv)
    keyfile.write_private_key(tmp_path / "k", priv)
    keyfile.write_public_key(tmp_path / "k.pub", pub)
    assert mode_of(tmp_path / "k") == 0o600 and mode_of(tmp_path / "k.pub") == 0o644
    assert (tmp_path / "k").read_text() == priv.hex() + "\n"
    assert keyfile.read_private_key(tmp_path / "k") == priv
    assert keyfile.read_public_key(tmp_path / "k.pub") == pub
    with pytest.raises(keyfile.KeyFileError, match="exists"):
        keyfile.write_private_key(tmp_path / "k", priv)


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    priv, _ = keyfile.generate_keypair()
    keyfile.write_private_key(tmp_path / "k", priv)
    os.chmod(tmp_path / "k", 0o640)
    with pytest.raises(keyfile.KeyFileError, match="chmod 600") as info:
        keyfile.read_private_key(tmp_path / "k")
    assert priv.hex() not in str(info.value)
    assert keyfile.read_private_key(tmp_path / "k", check_mode=False) == priv


@pytest.mark.parametrize("content", ["", "zz" * 32, "ab" * 31, "ab" * 33, "\xe9" * 64])
def test_bad_key_files(tmp_path: Path, content: str) -> None:
    path = tmp_path / "k.pub"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(keyfile.KeyFileError) as info:
        keyfile.read_public_key(path)
    assert str(path) in str(info.value)
    with pytest.raises(keyfile.KeyFileError, match="not found"):
        keyfile.read_public_key(tmp_path / "missing")
