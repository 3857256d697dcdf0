"""The ``lowbw`` command: operate the proxy and its devices.

    lowbw proxy init    --homeserver URL --dir DIR [...]   write config, keys, appservice registration
    lowbw proxy run     --config DIR/proxy.toml            serve devices (lowbw.proxy.server)
    lowbw device enroll --config ... NAME --room ROOM [...] Matrix identity, room, registry, device config
    lowbw device list   --config ... [--json]
    lowbw device revoke --config ... NAME
    lowbw device send   --device-config FILE VALUE... [...] (lowbw.device.cli)

Exit codes, the same for every subcommand (docs/operator.md): 0 ok; 1 the
command failed, a bad config file or a port in use included (one line on
stderr, ``lowbw COMMAND: error: ...``, no traceback); 2 bad usage (argparse).
Nothing printed here ever contains a private key or a token; files that hold
them are named, not shown.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import logging
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from lowbw import __version__
from lowbw.wire.errors import LowbwError

log = logging.getLogger("lowbw")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CommandFailed(Exception):
    """A failure with a message for the operator (exit 1)."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a port number" % text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("port %d is not in 0..65535" % value)
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not an integer" % text)
    if value < 1:
        raise argparse.ArgumentTypeError("%d is not positive" % value)
    return value


def _host_port(text: str) -> str:
    from lowbw.proxy.config import ConfigError, split_host_port

    try:
        split_host_port(text, "address")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def _listen(text: str) -> str:
    """``HOST:PORT`` or a bare port (loopback), for ``--metrics-listen``."""
    from lowbw.metrics import MetricsConfigError, parse_listen

    try:
        parse_listen(text, "address")
    except MetricsConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def _schema_spec(text: str) -> dict[str, Any]:
    from lowbw.proxy.enroll import EnrollError, parse_schema_spec

    try:
        return parse_schema_spec(text)
    except EnrollError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("%r must be >= 0" % text)
    return value


SCHEMA_HELP = """\
schema specs (--schema, repeatable; slot index = order given):
  NAME[:UNIT[:SCALE]]                    one field; the slot is named after it
  SLOT=FIELD[:UNIT[:SCALE]],FIELD...     several fields in one slot
  SCALE s: an integer v from the device means v * 10^-s ("215" with s=1 is 21.5).
examples:
  --schema temperature:°C:1
  --schema climate=temperature:°C:1,humidity:%:0 --schema battery:V:2
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbw",
        description="Matrix for things that talk at 100 bit/s: operate the lowbw proxy and its devices.",
    )
    parser.add_argument("--version", action="version", version="lowbw %s" % __version__)
    top = parser.add_subparsers(
        dest="group",
        metavar="{proxy,device,serial-gateway,mqtt-bridge,client-proxy,lorawan-gateway}",
        required=True,
    )

    # -- proxy ------------------------------------------------------------------
    proxy = top.add_parser("proxy", help="set up and run the proxy", description="Set up and run the proxy.")
    proxy_sub = proxy.add_subparsers(
        dest="command", metavar="{init,run,enroll-client,migrate-registry}", required=True
    )

    init = proxy_sub.add_parser(
        "init",
        help="write proxy.toml, the proxy key pair and the appservice registration",
        description=(
            "Create DIR (mode 0700) with proxy.toml, proxy.key (0600), proxy.pub and, in appservice "
            "mode, appservice.yaml: the registration file to add to the homeserver's "
            "app_service_config_files. Tokens and keys are random. Existing files are kept unless --force."
        ),
    )
    init.add_argument(
        "--homeserver",
        required=True,
        metavar="URL",
        help="homeserver base URL, e.g. https://matrix.example.org",
    )
    init.add_argument("--dir", required=True, metavar="DIR", help="directory to write (created 0700)")
    init.add_argument("--server-name", metavar="NAME", help="Matrix server name (default: the URL's host)")
    init.add_argument("--port", type=_port, default=5683, help="UDP port for devices (default 5683)")
    init.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDR",
        help="UDP address for devices (default 127.0.0.1; anything else is an explicit choice)",
    )
    init.add_argument(
        "--appservice-listen",
        type=_host_port,
        default="127.0.0.1:9009",
        metavar="HOST:PORT",
        help="where the homeserver pushes transactions (default 127.0.0.1:9009)",
    )
    init.add_argument(
        "--mode",
        choices=("appservice", "token"),
        default="appservice",
        help="appservice (default) or token: one access token per device",
    )
    init.add_argument(
        "--link-bps", type=_positive_int, default=100, metavar="N", help="radio link bit rate (default 100)"
    )
    init.add_argument(
        "--mtu",
        type=int,
        default=0,
        metavar="BYTES",
        help="largest datagram the radio carries (default: 256 up to 2400 bit/s, else 1024)",
    )
    init.add_argument(
        "--metrics-listen",
        type=_listen,
        metavar="HOST:PORT",
        help="serve Prometheus /metrics and the status page there ([metrics] listen; a bare port means "
        "127.0.0.1; off by default; off loopback a random token is written too)",
    )
    init.add_argument(
        "--registry",
        metavar="FILE|URL",
        help="the registry: an SQLite file (default DIR/registry.sqlite3) or postgresql://USER@HOST/DB "
        "(several proxies on one fleet: docs/scale-out.md)",
    )
    init.add_argument("--force", action="store_true", help="overwrite existing files (the registry is kept)")
    init.set_defaults(func=cmd_proxy_init)

    mig = proxy_sub.add_parser(
        "migrate-registry",
        help="copy an SQLite registry into PostgreSQL",
        description=(
            "Copy every device, counter, sent event, queued command and saved session of an SQLite "
            "registry into an empty PostgreSQL registry (schema created). Stop the proxies first; "
            "then set [proxy] registry to the URL."
        ),
    )
    mig.add_argument("--from", dest="source", required=True, metavar="FILE", help="the SQLite registry")
    mig.add_argument("--to", dest="target", required=True, metavar="URL", help="postgresql://USER@HOST/DB")
    mig.set_defaults(func=cmd_proxy_migrate_registry)

    run = proxy_sub.add_parser(
        "run", help="run the proxy", description="Serve devices over UDP until SIGTERM/SIGINT."
    )
    run.add_argument("--config", required=True, metavar="FILE", help="proxy.toml")
    run.add_argument(
        "--node",
        type=int,
        metavar="N",
        help="this process's node number of [cluster] nodes (overrides [cluster] node; docs/scale-out.md)",
    )
    run.set_defaults(func=cmd_proxy_run)

    ec = proxy_sub.add_parser(
        "enroll-client",
        help="enroll a client-proxy (a stock Matrix client across the radio)",
        description=(
            "Enroll a client-proxy key: writes the config for `lowbw client-proxy` (mode 0600, it "
            "holds the key). No Matrix user is made: whoever uses the client logs in as themselves."
        ),
    )
    ec.add_argument("--config", required=True, metavar="FILE", help="proxy.toml")
    ec.add_argument("name", metavar="NAME", help="a name for this client-proxy (a-z 0-9 _ -)")
    ec.add_argument("--out", metavar="FILE", help="config to write (default DIR/devices/NAME.client.toml)")
    ec.add_argument(
        "--proxy-host", metavar="HOST", help="address the client-proxy reaches the proxy at (default: bind)"
    )
    ec.add_argument("--proxy-port", type=_port, metavar="N", help="port it reaches the proxy at")
    ec.add_argument(
        "--listen", default="127.0.0.1:8008", metavar="HOST:PORT", help="HTTP address for the Matrix client"
    )
    ec.add_argument(
        "--profile",
        choices=("compact", "standard"),
        help="link profile: compact (Noise KK, 8-byte tags; the default below 10,000 bit/s) or standard",
    )
    ec.set_defaults(func=cmd_proxy_enroll_client)

    # -- device -----------------------------------------------------------------
    device = top.add_parser(
        "device",
        help="enroll, list, revoke devices; send a reading",
        description="Enroll, list and revoke devices; send a reading as a device.",
    )
    device_sub = device.add_subparsers(dest="command", metavar="{enroll,list,revoke,send}", required=True)

    enroll = device_sub.add_parser(
        "enroll",
        help="enroll a device",
        description=(
            "Create the device's key pair and Matrix user, join or create its room, record it\n"
            "in the registry and write its config (JSON, mode 0600: it holds the device's\n"
            "private key)."
        ),
        epilog=SCHEMA_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    enroll.add_argument("--config", required=True, metavar="FILE", help="proxy.toml")
    enroll.add_argument(
        "name", metavar="NAME", help="device name (a-z 0-9 _ -); the Matrix user is @<prefix>NAME"
    )
    enroll.add_argument(
        "--room",
        required=True,
        metavar="ROOM",
        help="room ID or alias to join (its encryption is detected), or `new` to create a private "
        "room, end-to-end encrypted unless --unencrypted",
    )
    enroll.add_argument(
        "--unencrypted",
        action="store_true",
        help="with --room new: a room without end-to-end encryption (readable by the homeserver)",
    )
    enroll.add_argument(
        "--schema",
        action="append",
        type=_schema_spec,
        default=[],
        metavar="SPEC",
        help="a reading slot (see below); repeat for more slots",
    )
    enroll.add_argument(
        "--schema-file",
        metavar="FILE",
        help="slots from a file: one SPEC per line, or JSON as in the device config",
    )
    enroll.add_argument(
        "--event-type",
        action="append",
        default=[],
        metavar="TYPE",
        help="event type the device may send (repeatable; default m.room.message)",
    )
    enroll.add_argument(
        "--permission",
        action="append",
        default=[],
        metavar="PERM",
        help="extra permission (repeatable): create_room",
    )
    enroll.add_argument(
        "--invite",
        action="append",
        default=[],
        metavar="USER",
        help="with --room new: invite this Matrix user (repeatable)",
    )
    enroll.add_argument(
        "--out", metavar="FILE", help="device config to write (default DIR/devices/NAME.json)"
    )
    enroll.add_argument(
        "--proxy-host", metavar="HOST", help="address devices reach the proxy at (default: bind)"
    )
    enroll.add_argument(
        "--proxy-port", type=_port, metavar="N", help="port devices reach the proxy at (default: port)"
    )
    enroll.add_argument(
        "--profile",
        choices=("compact", "standard"),
        help="link profile (docs/PROTOCOL.md): compact (Noise KK, 8-byte tags, compressed CoAP "
        "headers) or standard (Noise IK, 16-byte tags); default compact when the proxy's "
        "link_bps is below 10000, else standard",
    )
    enroll.set_defaults(func=cmd_device_enroll)

    lst = device_sub.add_parser("list", help="list enrolled devices", description="List enrolled devices.")
    lst.add_argument("--config", required=True, metavar="FILE", help="proxy.toml")
    lst.add_argument("--json", action="store_true", help="JSON instead of a table")
    lst.set_defaults(func=cmd_device_list)

    revoke = device_sub.add_parser(
        "revoke",
        help="revoke a device (at once, even mid-session)",
        description="Revoke a device: a running proxy drops its sessions at the next datagram.",
    )
    revoke.add_argument("--config", required=True, metavar="FILE", help="proxy.toml")
    revoke.add_argument("name", metavar="NAME")
    revoke.set_defaults(func=cmd_device_revoke)

    send = device_sub.add_parser(
        "send",
        help="send one reading as a device (CPython device client)",
        description="Send one reading with the device client; exits 0 once the proxy acknowledged it.",
    )
    add_send_arguments(send)
    send.set_defaults(func=None)

    # Programs that parse their own arguments; listed here so `lowbw --help` shows them.
    for name, (_module, help_text) in PASSTHROUGH.items():
        top.add_parser(name, help=help_text, add_help=False)
    return parser


# Subcommands handed whole to another module's main(argv).
PASSTHROUGH = {
    "serial-gateway": (
        "lowbw.adapters.serial_gateway",
        "bridge a serial line (radio modem or line-protocol sensor) to the proxy",
    ),
    "mqtt-bridge": ("lowbw.adapters.mqtt_bridge", "bridge MQTT topics into Matrix rooms and back"),
    "client-proxy": ("lowbw.clientproxy.main", "serve a stock Matrix client across the radio link"),
    "lorawan-gateway": (
        "lowbw.lorawan.gateway",
        "carry lowbw datagrams between a LoRaWAN network server (MQTT) and the proxy",
    ),
}


def add_send_arguments(send: argparse.ArgumentParser) -> None:
    # Only used while lowbw.device.cli is missing; it parses its own arguments.
    send.add_argument("--device-config", required=True, metavar="FILE", help="the device's config JSON")
    send.add_argument("values", nargs="+", metavar="VALUE", help="field values of the slot, in order")
    send.add_argument("--slot", type=int, default=0, metavar="N", help="slot index (default 0)")
    send.add_argument("--state", metavar="FILE", help="state file (default <device config>.state)")
    send.add_argument("--timeout", type=_non_negative_float, metavar="S", help="give up after S seconds")


# -- commands ---------------------------------------------------------------------


def _load_config(path: str) -> Any:
    from lowbw.proxy.config import load

    return load(path)


def cmd_proxy_init(args: argparse.Namespace) -> int:
    from lowbw.proxy.config import write_default

    result = write_default(
        args.dir,
        args.homeserver,
        server_name=args.server_name,
        bind=args.bind,
        port=args.port,
        link_bps=args.link_bps,
        mtu=args.mtu,
        mode=args.mode,
        appservice_listen=args.appservice_listen,
        metrics_listen=args.metrics_listen,
        registry=args.registry,
        force=args.force,
    )
    cfg = result.config
    print("lowbw proxy directory %s%s" % (cfg.dir, " (created, mode 0700)" if result.created_dir else ""))
    for path, mode in result.written:
        print("  wrote %-60s mode %04o" % (path, mode))
    if args.server_name is None:
        print(
            "  server name %s (from the URL; pass --server-name if user IDs end in another name)"
            % cfg.homeserver.server_name
        )
    if result.kept_registry:
        print("  kept  %s (devices enrolled with an old proxy key must be re-enrolled)" % cfg.proxy.registry)
    if args.bind not in ("127.0.0.1", "::1", "localhost"):
        print("note: devices reach the proxy on %s (not loopback), as you asked" % args.bind)
    if cfg.metrics is not None and cfg.metrics.enabled:
        where = "http://%s" % cfg.metrics.listen
        if cfg.metrics.token:
            print("  metrics and status page on %s (token in [metrics] token of proxy.toml)" % where)
        else:
            print("  metrics and status page on %s (loopback only)" % where)
    print()
    print("Next steps:")
    step = 1
    if cfg.appservice is not None:
        print("  %d. Add the registration to the homeserver's config (homeserver.yaml for Synapse):" % step)
        print("       app_service_config_files:")
        print("         - %s" % cfg.appservice.registration)
        print("     (the homeserver must be able to read that file) and restart the homeserver.")
        print("     It pushes room events to %s: the proxy listens there." % cfg.appservice.url)
    else:
        print("  %d. Token mode: put the homeserver's registration_shared_secret into [homeserver]" % step)
        print("     registration_shared_secret in %s, so enroll can register device users." % cfg.path)
    step += 1
    print("  %d. Start the proxy:" % step)
    print("       lowbw proxy run --config %s" % cfg.path)
    step += 1
    print("  %d. Enroll a device:" % step)
    print(
        "       lowbw device enroll --config %s sensor1 --room new --invite @you:%s --schema temperature:°C:1"
        % (cfg.path, cfg.homeserver.server_name)
    )
    return EXIT_OK


def _import_runner(module: str, attribute: str, what: str) -> Any:
    """``module.attribute``, or CommandFailed naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            raise CommandFailed("%s is not available in this installation (%s is missing)" % (what, module))
        raise CommandFailed("%s cannot be loaded: %s" % (what, exc))
    except ImportError as exc:
        raise CommandFailed("%s cannot be loaded: %s" % (what, exc))
    func = getattr(mod, attribute, None)
    if func is None:
        raise CommandFailed("%s is not available: %s has no %s()" % (what, module, attribute))
    return func


def cmd_proxy_migrate_registry(args: argparse.Namespace) -> int:
    from lowbw.proxy import regdb
    from lowbw.proxy.regmigrate import migrate

    counts = migrate(args.source, args.target, progress=lambda t, n: print("  %-16s %d row(s)" % (t, n)))
    print(
        "copied %s into %s (%d device(s))"
        % (args.source, regdb.redact(args.target), counts.get("devices", 0))
    )
    return EXIT_OK


def cmd_proxy_run(args: argparse.Namespace) -> int:
    cfg = _load_config(args.config)
    server_main = _import_runner("lowbw.proxy.server", "main", "the proxy server")
    if args.node is not None:
        return int(server_main(str(cfg.path), node=args.node))
    return int(server_main(str(cfg.path)))


def cmd_proxy_enroll_client(args: argparse.Namespace) -> int:
    from lowbw.proxy.enroll import enroll_client

    cfg = _load_config(args.config)
    result = enroll_client(
        cfg,
        args.name,
        out=args.out,
        proxy_host=args.proxy_host,
        proxy_port=args.proxy_port,
        listen=args.listen,
        profile=args.profile,
    )
    print("enrolled client-proxy %s" % result.record.name)
    print("  profile      %s" % result.record.profile)
    print("  public key   %s" % result.record.public_key.hex())
    print("  config       %s (mode 0600: it holds the private key)" % result.config_path)
    print("  run it with  lowbw client-proxy --config %s" % result.config_path)
    return EXIT_OK


def cmd_device_enroll(args: argparse.Namespace) -> int:
    from lowbw.proxy.enroll import enroll, load_schema_file

    cfg = _load_config(args.config)
    slots = list(args.schema)
    if args.schema_file:
        slots += load_schema_file(args.schema_file)
    result = asyncio.run(
        enroll(
            cfg,
            args.name,
            args.room,
            slots=slots,
            event_types=args.event_type,
            permissions=args.permission,
            invite=args.invite,
            out=args.out,
            proxy_host=args.proxy_host,
            proxy_port=args.proxy_port,
            encrypted=not args.unencrypted,
            profile=args.profile,
        )
    )
    rec = result.record
    print("enrolled %s" % rec.name)
    print(
        "  matrix user  %s%s"
        % (rec.user_id, " (own access token, in the registry)" if rec.access_token else "")
    )
    print(
        "  room         %s%s%s"
        % (
            result.room_id,
            " (created)" if result.created_room else " (joined)",
            ", end-to-end encrypted: the proxy is the device's Matrix device (docs/e2ee.md)"
            if rec.encrypted
            else ", not encrypted",
        )
    )
    print("  public key   %s" % rec.public_key.hex())
    print("  link profile %s" % rec.profile)
    print(
        "  slots        %s" % (", ".join("%d=%s" % (i, s["name"]) for i, s in enumerate(rec.slots)) or "none")
    )
    print("  event types  %s" % ", ".join(rec.event_types))
    if rec.permissions:
        print("  permissions  %s" % ", ".join(rec.permissions))
    print(
        "  device config %s (mode 0600: it holds the device's private key; copy it to the device)"
        % result.config_path
    )
    return EXIT_OK


def _format_ms(ms: int) -> str:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_device_list(args: argparse.Namespace) -> int:
    from lowbw.proxy.registry import Registry

    cfg = _load_config(args.config)
    with Registry(cfg.proxy.registry) as registry:
        devices = registry.devices()
    if args.json:
        rows = [
            {
                "name": d.name,
                "public_key": d.public_key.hex(),
                "user_id": d.user_id,
                "token_mode": d.access_token is not None,
                "rooms": d.rooms,
                "event_types": d.event_types,
                "slots": d.slots,
                "permissions": d.permissions,
                "revoked": d.revoked,
                "created_ms": d.created_ms,
                "encrypted": d.encrypted,
                "profile": d.profile,
            }
            for d in devices
        ]
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not devices:
        print("no devices enrolled (registry %s)" % registry.location)
        return EXIT_OK
    table = [("NAME", "STATUS", "USER", "ROOMS", "E2EE", "SLOTS", "KEY", "ENROLLED")]
    for d in devices:
        table.append(
            (
                d.name,
                "revoked" if d.revoked else "active",
                d.user_id,
                ",".join(d.rooms),
                "yes" if d.encrypted else "no",
                ",".join(s.get("name", "?") for s in d.slots) or "-",
                d.public_key.hex()[:16],
                _format_ms(d.created_ms),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def cmd_device_revoke(args: argparse.Namespace) -> int:
    from lowbw.proxy.registry import Registry

    cfg = _load_config(args.config)
    with Registry(cfg.proxy.registry) as registry:
        record = registry.device(args.name)
        if record is None:
            raise CommandFailed("no device named %r in %s" % (args.name, registry.location))
        if not registry.revoke(args.name):
            print("%s was already revoked" % args.name)
            return EXIT_OK
    print("revoked %s (%s): a running proxy drops its sessions at once" % (args.name, record.user_id))
    print("its Matrix user stays in its rooms; remove it there if you want it gone from Matrix too")
    return EXIT_OK


def device_send(argv: Sequence[str], parser: argparse.ArgumentParser) -> int:
    """``lowbw device send``: handed to lowbw.device.cli.send_main with its own argv."""
    try:
        send_main = _import_runner("lowbw.device.cli", "send_main", "the device client (lowbw device send)")
    except CommandFailed as exc:
        # Still answer --help and usage errors as every other command does.
        parser.parse_args(["device", "send", *argv])
        raise exc
    return int(send_main(list(argv)))


def _command_name(args_list: Sequence[str]) -> str:
    """``lowbw device list`` etc.: the prefix of error lines, as argparse's own."""
    words = ["lowbw"]
    for word in args_list[:2]:
        if word.startswith("-"):
            break
        words.append(word)
        if word in PASSTHROUGH or word not in ("proxy", "device"):
            break
    return " ".join(words)


def _check_client_proxy_config(argv: Sequence[str]) -> None:
    """A bad client-proxy config is a failure (exit 1) like every other command's, not a usage error."""
    from lowbw.clientproxy.config import load
    from lowbw.clientproxy.main import parser as client_proxy_parser

    args, _rest = client_proxy_parser().parse_known_args(list(argv))
    load(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status (docs/operator.md, "Exit status"): 0 ok; 1 the
    command failed, bad config files and ports in use included, with one line on
    stderr ``lowbw COMMAND: error: ...``; 2 bad usage (argparse)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    name = _command_name(args_list)
    try:
        if args_list[:2] == ["device", "send"]:
            return device_send(args_list[2:], parser)
        if args_list and args_list[0] in PASSTHROUGH:
            module, help_text = PASSTHROUGH[args_list[0]]
            run = _import_runner(module, "main", "lowbw %s" % args_list[0])
            if args_list[0] == "client-proxy":
                _check_client_proxy_config(args_list[1:])
            return int(run(args_list[1:]))
        args = parser.parse_args(args_list)
        if args.func is not cmd_proxy_run:
            # The proxy server sets up its own logging (INFO); the operator's commands
            # print what they did and log only problems.
            logging.basicConfig(level=logging.WARNING, format="lowbw: %(levelname)s %(name)s: %(message)s")
        return int(args.func(args))
    except CommandFailed as exc:
        print("%s: error: %s" % (name, exc), file=sys.stderr)
        return EXIT_FAILED
    except LowbwError as exc:
        print("%s: error: %s" % (name, exc.message or type(exc).__name__), file=sys.stderr)
        return EXIT_FAILED
    except sqlite3.Error as exc:
        print("%s: error: registry: %s" % (name, exc), file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        where = " %s:" % exc.filename if getattr(exc, "filename", None) else ""
        print("%s: error:%s %s" % (name, where, exc.strerror or exc), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("%s: interrupted" % name, file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
