"""The `lowbw` command line: help, usage errors (exit 2), runtime errors (exit 1, no traceback),
proxy init, device list/revoke on a local registry, and the hand-off of `proxy run` / `device send`.

Enrollment against Synapse is in test_enroll.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lowbw.cli import main
from lowbw.proxy.config import load
from lowbw.proxy.registry import DeviceRecord, Registry


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit code, stdout, stderr of one in-process run (argparse's SystemExit included)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def init_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Path:
    argv = ["proxy", "init", "--homeserver", "http://127.0.0.1:8008", "--dir", str(tmp_path / "p"), *extra]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    return tmp_path / "p" / "proxy.toml"


def all_secrets(config: Path) -> list[str]:
    cfg = load(config)
    found = [cfg.read_private_key().hex()]
    if cfg.appservice is not None:
        found += [cfg.appservice.as_token, cfg.appservice.hs_token]
    return found


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if lowbw.proxy.server and lowbw.device.cli were not written yet."""
    monkeypatch.setitem(sys.modules, "lowbw.proxy.server", None)
    monkeypatch.setitem(sys.modules, "lowbw.device.cli", None)


# -- help and usage ------------------------------------------------------------------

COMMANDS = [
    [],
    ["proxy"],
    ["proxy", "init"],
    ["proxy", "run"],
    ["device"],
    ["device", "enroll"],
    ["device", "list"],
    ["device", "revoke"],
    ["device", "send"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lowbw")
def test_help(command: list[str], capsys: pytest.CaptureFixture[str], no_server: None) -> None:
    code, out, err = run([*command, "--help"], capsys)
    assert code == 0 and err == ""
    assert out.startswith("usage: lowbw")
    assert " ".join(["lowbw", *command]) in out


def test_help_texts_say_what_matters(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(["device", "enroll", "--help"], capsys)
    for word in ("--schema", "--room", "new", "SLOT=FIELD", "10^-s", "--invite", "--schema-file", "0600"):
        assert word in out
    _, out, _ = run(["proxy", "init", "--help"], capsys)
    for word in ("--homeserver", "--dir", "--force", "app_service_config_files", "--appservice-listen"):
        assert word in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["bogus"], "invalid choice"),
        (["proxy"], "required"),
        (["proxy", "init", "--dir", "x"], "--homeserver"),
        (["proxy", "init", "--homeserver", "http://h"], "--dir"),
        (["proxy", "init", "--homeserver", "http://h", "--dir", "x", "--port", "x"], "not a port number"),
        (["proxy", "init", "--homeserver", "http://h", "--dir", "x", "--port", "70000"], "not in 0..65535"),
        (["proxy", "init", "--homeserver", "http://h", "--dir", "x", "--mode", "sso"], "invalid choice"),
        (["proxy", "init", "--homeserver", "http://h", "--dir", "x", "--link-bps", "0"], "not positive"),
        (
            ["proxy", "init", "--homeserver", "http://h", "--dir", "x", "--appservice-listen", "9009"],
            "HOST:PORT",
        ),
        (["proxy", "run"], "--config"),
        (["device", "enroll", "--config", "c", "n"], "--room"),
        (["device", "enroll", "--config", "c", "--room", "new"], "NAME"),
        (
            ["device", "enroll", "--config", "c", "n", "--room", "new", "--schema", "a:b:c:d"],
            "name:unit:scale",
        ),
        (["device", "enroll", "--config", "c", "n", "--room", "new", "--schema", "t::x"], "scale"),
        (
            ["device", "enroll", "--config", "c", "n", "--room", "new", "--proxy-port", "-1"],
            "not in 0..65535",
        ),
        (["device", "list"], "--config"),
        (["device", "list", "--config", "c", "--yaml"], "unrecognized"),
        (["device", "revoke", "--config", "c"], "NAME"),
        (["device", "send", "1"], "--device-config"),
        (["device", "send", "--device-config", "f"], "VALUE"),
        (["device", "send", "--device-config", "f", "1", "--timeout", "soon"], "not a number"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], no_server: None
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert "usage: lowbw" in err and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["proxy", "run", "--config"],
        ["device", "enroll", "--room", "new", "n", "--config"],
        ["device", "list", "--config"],
        ["device", "revoke", "n", "--config"],
    ],
)
def test_missing_config_exits_1(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope" / "proxy.toml")
    code, out, err = run([*argv, missing], capsys)
    assert code == 1
    # The prefix names the command, as argparse's usage errors do.
    assert err.startswith("lowbw %s: error: config file not found: %s" % (" ".join(argv[:2]), missing))
    assert err.count("\n") == 1


def test_errors_in_a_real_process_have_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "proxy.toml"
    bad.write_text("[homeserver]\nurl = 5\n")
    for argv, expect in (
        (["proxy", "run", "--config", str(tmp_path / "missing.toml")], "config file not found"),
        (["device", "list", "--config", str(bad)], "[homeserver] url must be a string"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "lowbw", *argv], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1
        assert expect in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "lowbw", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("lowbw ")


# -- proxy init ------------------------------------------------------------------------


def test_proxy_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "p"
    code, out, err = run(
        ["proxy", "init", "--homeserver", "https://matrix.example.org", "--dir", str(target),
         "--server-name", "example.org", "--port", "5700", "--appservice-listen", "127.0.0.1:9100",
         "--link-bps", "300"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    cfg = load(target / "proxy.toml")
    assert (
        cfg.proxy.port == 5700 and cfg.proxy.link_bps == 300 and cfg.homeserver.server_name == "example.org"
    )
    assert cfg.appservice is not None and cfg.appservice.listen == "127.0.0.1:9100"
    assert "app_service_config_files" in out
    assert str(target / "appservice.yaml") in out
    assert "lowbw proxy run --config %s" % (target / "proxy.toml") in out
    assert "lowbw device enroll --config %s" % (target / "proxy.toml") in out
    assert "mode 0600" in out and "proxy.key" in out
    for secret in all_secrets(target / "proxy.toml"):
        assert secret not in out + err

    # Refuses to overwrite; --force does, and keeps the registry.
    key_before = (target / "proxy.key").read_text()
    code, out, err = run(
        ["proxy", "init", "--homeserver", "https://matrix.example.org", "--dir", str(target)], capsys
    )
    assert code == 1 and "refusing to overwrite" in err and "--force" in err
    assert (target / "proxy.key").read_text() == key_before
    Registry(target / "registry.sqlite3").close()
    code, out, err = run(
        ["proxy", "init", "--homeserver", "https://matrix.example.org", "--dir", str(target), "--force"],
        capsys,
    )
    assert code == 0 and "kept" in out and "registry.sqlite3" in out
    assert (target / "proxy.key").read_text() != key_before
    for secret in all_secrets(target / "proxy.toml"):
        assert secret not in out + err


def test_proxy_init_token_mode_and_non_loopback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = init_dir(tmp_path, capsys, "--mode", "token", "--bind", "0.0.0.0")
    cfg = load(config)
    assert cfg.mode == "token" and cfg.proxy.bind == "0.0.0.0"
    assert not (config.parent / "appservice.yaml").exists()


def test_proxy_init_prints_next_steps_for_token_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["proxy", "init", "--homeserver", "http://127.0.0.1:8008", "--dir", str(tmp_path / "p")]
    code, out, _ = run([*argv, "--mode", "token", "--bind", "0.0.0.0"], capsys)
    assert code == 0
    assert "registration_shared_secret" in out and "not loopback" in out
    assert "app_service_config_files" not in out


def test_proxy_init_bad_homeserver_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        ["proxy", "init", "--homeserver", "matrix.example.org", "--dir", str(tmp_path)], capsys
    )
    assert code == 1 and "must be http(s)://" in err


# -- device list / revoke on a local registry ----------------------------------------


def enrolled(config: Path, *names: str) -> None:
    cfg = load(config)
    with Registry(cfg.proxy.registry) as reg:
        for name in names:
            reg.add_device(
                DeviceRecord(
                    name=name,
                    public_key=os.urandom(32),
                    user_id="@lowbw_%s:127.0.0.1" % name,
                    access_token="syt_DEVICE_TOKEN_%s" % name,
                    rooms=["!r:127.0.0.1"],
                    slots=[{"name": "t", "fields": [{"name": "t", "unit": "°C", "scale": 1}]}],
                )
            )


def test_device_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = init_dir(tmp_path, capsys)
    code, out, _ = run(["device", "list", "--config", str(config)], capsys)
    assert code == 0 and "no devices enrolled" in out
    code, out, _ = run(["device", "list", "--config", str(config), "--json"], capsys)
    assert json.loads(out) == []

    enrolled(config, "beta", "alpha")
    code, out, _ = run(["device", "list", "--config", str(config)], capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "USER", "ROOMS", "E2EE", "SLOTS", "KEY", "ENROLLED"]
    assert [line.split()[0] for line in lines[1:]] == ["alpha", "beta"]
    assert all(" active " in line for line in lines[1:])
    assert "DEVICE_TOKEN" not in out

    code, out, err = run(["device", "revoke", "--config", str(config), "alpha"], capsys)
    assert code == 0 and "revoked alpha" in out
    code, out, err = run(["device", "revoke", "--config", str(config), "alpha"], capsys)
    assert code == 0 and "already revoked" in out
    code, out, err = run(["device", "revoke", "--config", str(config), "gamma"], capsys)
    assert code == 1 and "no device named 'gamma'" in err

    code, out, _ = run(["device", "list", "--config", str(config), "--json"], capsys)
    rows = json.loads(out)
    assert [(r["name"], r["revoked"], r["token_mode"]) for r in rows] == [
        ("alpha", True, True),
        ("beta", False, True),
    ]
    assert "DEVICE_TOKEN" not in out
    for secret in all_secrets(config):
        assert secret not in out


def test_revoke_while_the_proxy_holds_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = init_dir(tmp_path, capsys)
    enrolled(config, "sensor1")
    with Registry(load(config).proxy.registry) as proxy:
        rec = proxy.device("sensor1")
        assert rec is not None and proxy.device_by_key(rec.public_key) is not None
        proxy.changed()
        proc = subprocess.run(
            [sys.executable, "-m", "lowbw", "device", "revoke", "--config", str(config), "sensor1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert proxy.changed() is True
        assert proxy.device_by_key(rec.public_key) is None


def test_corrupt_registry_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = init_dir(tmp_path, capsys)
    load(config).proxy.registry.write_bytes(b"garbage" * 200)
    code, out, err = run(["device", "list", "--config", str(config)], capsys)
    assert code == 1 and "not a usable lowbw registry" in err


# -- hand-off to the proxy server and the device client ---------------------------------


def test_proxy_run_without_the_server_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_server: None
) -> None:
    config = init_dir(tmp_path, capsys)
    code, out, err = run(["proxy", "run", "--config", str(config)], capsys)
    assert code == 1
    assert "the proxy server is not available" in err and "lowbw.proxy.server" in err


def test_proxy_run_hands_over_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = init_dir(tmp_path, capsys)
    calls: list[str] = []
    fake = types.ModuleType("lowbw.proxy.server")
    configured: list[object] = []
    # The server configures logging itself (INFO); the CLI must not have done it first.
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: configured.append(kw))

    def fake_main(config_path: str) -> int:
        calls.append(config_path)
        return 7

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lowbw.proxy.server", fake)
    code, _, _ = run(["proxy", "run", "--config", str(config)], capsys)
    assert code == 7 and calls == [str(config)]
    assert configured == []


def test_proxy_run_with_a_broken_server_module(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = init_dir(tmp_path, capsys)
    monkeypatch.setitem(sys.modules, "lowbw.proxy.server", types.ModuleType("lowbw.proxy.server"))
    code, _, err = run(["proxy", "run", "--config", str(config)], capsys)
    assert code == 1 and "has no main()" in err


def test_device_send_without_the_client(capsys: pytest.CaptureFixture[str], no_server: None) -> None:
    code, out, err = run(["device", "send", "--device-config", "d.json", "21.5"], capsys)
    assert code == 1
    assert "device client" in err and "lowbw.device.cli" in err and "Traceback" not in err


def test_device_send_hands_over_argv(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    fake = types.ModuleType("lowbw.device.cli")

    def send_main(argv: list[str]) -> int:
        calls.append(argv)
        return 0

    fake.send_main = send_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lowbw.device.cli", fake)
    argv = ["--device-config", "d.json", "21.5", "40", "--slot", "1", "--future-flag"]
    code, _, _ = run(["device", "send", *argv], capsys)
    assert code == 0 and calls == [argv]


@pytest.mark.parametrize("command", ["serial-gateway", "mqtt-bridge"])
def test_adapter_commands_are_wired(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from lowbw import cli

    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: lowbw %s" % command in capsys.readouterr().out
    assert cli.main([command, "--config", "/nonexistent/x.toml"]) in (1, 2)


def test_enroll_client_and_client_proxy_config_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = init_dir(tmp_path, capsys, "--mtu", "512", "--link-bps", "1000")
    out_file = tmp_path / "laptop.client.toml"
    code, out, err = run(
        ["proxy", "enroll-client", "--config", str(config), "laptop", "--out", str(out_file)], capsys
    )
    assert code == 0, err
    assert "lowbw client-proxy --config %s" % out_file in out
    assert out_file.stat().st_mode & 0o077 == 0  # it holds a private key
    from lowbw.clientproxy.config import load as load_client

    ccfg = load_client(out_file)
    assert (
        ccfg.mtu == 512 and ccfg.link_bps == 1000 and ccfg.proxy_public_key == load(config).read_public_key()
    )
    assert "private_key" not in repr(ccfg) and ccfg.private_key.hex() not in repr(ccfg)
    with Registry(load(config).proxy.registry) as reg:
        rec = reg.device("laptop")
        assert rec is not None and rec.permissions == ["client"] and rec.user_id == ""
    code, out, _ = run(["device", "list", "--config", str(config)], capsys)
    assert code == 0 and "laptop" in out
    # The same name again, or an existing file: refused, nothing overwritten.
    code, _, err = run(
        ["proxy", "enroll-client", "--config", str(config), "laptop", "--out", str(out_file)], capsys
    )
    assert code == 1 and "already enrolled" in err
    # The client-proxy refuses bad config files with a clear message and exit 1 (a failure, not usage).
    bad = tmp_path / "bad.toml"
    for text in ("not toml [", 'proxy = "nohost"\nproxy_public_key = "00"\nprivate_key = "00"\n'):
        bad.write_text(text)
        bad.chmod(0o600)
        code, _, err = run(["client-proxy", "--config", str(bad)], capsys)
        assert code == 1 and err.startswith("lowbw client-proxy: error: ")
    bad.chmod(0o644)
    code, _, err = run(["client-proxy", "--config", str(bad)], capsys)
    assert code == 1 and "readable by others" in err


# -- link profile of a client-proxy (issue 14) ----------------------------------------


@pytest.mark.parametrize(
    "link_bps, flag, expect",
    [
        ("1000", None, "compact"),  # below 10,000 bit/s: compact by default
        ("9999", None, "compact"),
        ("10000", None, "standard"),
        ("1000000", None, "standard"),
        ("1000", "standard", "standard"),
        ("1000000", "compact", "compact"),
    ],
)
def test_enroll_client_records_the_link_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], link_bps: str, flag: str | None, expect: str
) -> None:
    config = init_dir(tmp_path, capsys, "--link-bps", link_bps)
    out_file = tmp_path / "laptop.client.toml"
    argv = ["proxy", "enroll-client", "--config", str(config), "laptop", "--out", str(out_file)]
    code, out, err = run(argv + (["--profile", flag] if flag else []), capsys)
    assert code == 0, err
    assert "  profile      %s\n" % expect in out
    # Both the registry record and the client-proxy's config say it.
    with Registry(load(config).proxy.registry) as reg:
        rec = reg.device("laptop")
        assert rec is not None and rec.profile == expect and rec.permissions == ["client"]
    assert 'profile = "%s"\n' % expect in out_file.read_text()
    from lowbw.clientproxy.config import load as load_client

    assert load_client(out_file).profile == expect


def test_enroll_client_refuses_an_unknown_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = init_dir(tmp_path, capsys, "--link-bps", "1000")
    out_file = tmp_path / "laptop.client.toml"
    argv = ["proxy", "enroll-client", "--config", str(config), "laptop", "--out", str(out_file)]
    code, _, err = run(argv + ["--profile", "tiny"], capsys)
    assert code == 2 and "--profile" in err and "invalid choice" in err
    assert not out_file.exists()
    with Registry(load(config).proxy.registry) as reg:
        assert reg.device("laptop") is None
    # The library call says the same in its own words.
    from lowbw.proxy.enroll import EnrollError, enroll_client

    with pytest.raises(EnrollError, match="--profile is one of .*compact.*not 'tiny'"):
        enroll_client(load(config), "laptop", out=out_file, profile="tiny")
    assert not out_file.exists()
    code, out, _ = run(["proxy", "enroll-client", "--help"], capsys)
    assert code == 0 and "--profile {compact,standard}" in out and "10,000 bit/s" in " ".join(out.split())


def test_client_proxy_config_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lowbw.clientproxy.config import ClientProxyConfigError
    from lowbw.clientproxy.config import load as load_client

    config = init_dir(tmp_path, capsys, "--link-bps", "1000")
    out_file = tmp_path / "laptop.client.toml"
    code, _, err = run(
        ["proxy", "enroll-client", "--config", str(config), "laptop", "--out", str(out_file)], capsys
    )
    assert code == 0, err
    written = out_file.read_text()
    assert written.count("profile = ") == 1
    path = tmp_path / "edited.client.toml"

    def with_profile(line: str | None) -> Path:
        lines = [x for x in written.splitlines() if not x.startswith("profile = ")]
        if line is not None:
            lines.append(line)
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    assert load_client(with_profile('profile = "compact"')).profile == "compact"
    assert load_client(with_profile('profile = "standard"')).profile == "standard"
    # Absent: standard (every client-proxy enrolled before profiles existed).
    assert load_client(with_profile(None)).profile == "standard"
    for bad in ('profile = "Compact"', 'profile = "kk"', 'profile = ""', "profile = 1", "profile = true",
                'profile = ["compact"]'):
        with pytest.raises(ClientProxyConfigError, match='profile must be "compact" or "standard"') as exc:
            load_client(with_profile(bad))
        assert str(path) in exc.value.message
        # The command line says it too: exit 1, one line, no traceback.
        code, _, err = run(["client-proxy", "--config", str(path)], capsys)
        assert code == 1 and err.startswith("lowbw client-proxy: error: ") and "profile must be" in err
        assert "Traceback" not in err
    # to_toml writes the profile, and what it writes loads back the same.
    for profile in ("compact", "standard"):
        cfg = load_client(with_profile('profile = "%s"' % profile))
        path.write_text(cfg.to_toml())
        assert 'profile = "%s"\n' % profile in path.read_text()
        assert load_client(path).profile == profile
