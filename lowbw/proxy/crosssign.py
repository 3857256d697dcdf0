"""A self-signed cross-signing identity for a device user, signing its one Matrix device.

Matrix clients (Element) show a device as signed by its owner when the owner's
*self-signing key* has signed the device's keys, and the owner's *master key*
has signed the self-signing key. A device user of lowbw has no person behind
it, so the proxy makes that identity itself, once per device user:

1. three Ed25519 keys (``cryptography``): master, self-signing, user-signing;
2. ``POST /keys/device_signing/upload`` with the master key and the two
   others signed by it (in appservice mode as the appservice, which the
   homeserver exempts from interactive authentication; in token mode the
   homeserver allows a first upload without it, MSC3967);
3. ``POST /keys/signatures/upload``: the device's keys signed by the
   self-signing key.

The private keys are kept (to sign again if the device keys ever change) in
``<store>/<user id>.xsign``, AES-256-GCM under the store's pickle key, 0600.
What a person must do to trust it: verify the device user (compare the master
key in ``lowbw device list --keys``... see docs/e2ee.md); signing by the
device user's own identity proves only that the proxy vouches for the device.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from lowbw.wire.errors import LowbwError

log = logging.getLogger("lowbw.proxy.e2ee")

USAGES = ("master", "self_signing", "user_signing")


class CrossSigningError(LowbwError):
    """The cross-signing keys could not be made or uploaded."""


def canonical_json(obj: Any) -> bytes:
    """Matrix canonical JSON (sorted keys, no spaces, UTF-8)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def public_b64(key: Ed25519PrivateKey) -> str:
    return unpadded_b64(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign_json(obj: dict[str, Any], user_id: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    """``obj`` with a signature by ``key`` added under ``signatures[user_id]["ed25519:<pub>"]``."""
    unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = unpadded_b64(key.sign(canonical_json(unsigned)))
    out = dict(obj)
    sigs = {u: dict(s) for u, s in obj.get("signatures", {}).items()}
    sigs.setdefault(user_id, {})["ed25519:" + public_b64(key)] = signature
    out["signatures"] = sigs
    return out


def key_object(user_id: str, usage: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    pub = public_b64(key)
    return {"user_id": user_id, "usage": [usage], "keys": {"ed25519:" + pub: pub}}


def _file(store: Path, user_id: str) -> Path:
    return store / ("%s.xsign" % hashlib.sha256(user_id.encode()).hexdigest()[:24])


def _aead(pickle_key: str) -> AESGCM:
    return AESGCM(hashlib.sha256(b"lowbw cross-signing v1" + pickle_key.encode()).digest())


def load_keys(store: Path, user_id: str, pickle_key: str) -> dict[str, Ed25519PrivateKey] | None:
    path = _file(store, user_id)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        plain = _aead(pickle_key).decrypt(blob[:12], blob[12:], user_id.encode())
        seeds = json.loads(plain)
        return {u: Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seeds[u])) for u in USAGES}
    except Exception as exc:  # noqa: BLE001 - a damaged file: say so, never guess
        raise CrossSigningError(
            "%s cannot be read (%s): move it away to make new keys" % (path, exc)
        ) from None


def save_keys(store: Path, user_id: str, pickle_key: str, keys: dict[str, Ed25519PrivateKey]) -> None:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    seeds = {
        u: k.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex() for u, k in keys.items()
    }
    nonce = os.urandom(12)
    blob = nonce + _aead(pickle_key).encrypt(nonce, json.dumps(seeds).encode(), user_id.encode())
    path = _file(store, user_id)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)


def master_fingerprint(store: Path, user_id: str, pickle_key: str) -> str | None:
    keys = load_keys(store, user_id, pickle_key)
    return public_b64(keys["master"]) if keys else None


async def _post(client: Any, path: str, body: dict[str, Any], as_token: str | None) -> tuple[int, Any]:
    """POST with the device's token, or as the appservice acting for the device user."""
    import aiohttp

    if as_token:
        headers = {"Authorization": "Bearer %s" % as_token}
        params = {"user_id": client.user_id}
    else:
        headers = {"Authorization": "Bearer %s" % client.access_token}
        params = {}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            client.homeserver + path, json=body, headers=headers, params=params, ssl=client.ssl
        ) as resp:
            return resp.status, await resp.json(content_type=None)


async def ensure_signed(client: Any, store: Path, pickle_key: str, *, as_token: str | None) -> str:
    """Make (once) the device user's cross-signing keys and sign ``client``'s device; the master key.

    Idempotent: a second call with the keys on disk only re-signs if the
    device's signature from the self-signing key is missing.
    """
    user_id, device_id = client.user_id, client.device_id
    keys = load_keys(store, user_id, pickle_key)
    fresh = keys is None
    if keys is None:
        keys = {u: Ed25519PrivateKey.generate() for u in USAGES}
    master = key_object(user_id, "master", keys["master"])
    if fresh:
        body = {
            "master_key": master,
            "self_signing_key": sign_json(
                key_object(user_id, "self_signing", keys["self_signing"]), user_id, keys["master"]
            ),
            "user_signing_key": sign_json(
                key_object(user_id, "user_signing", keys["user_signing"]), user_id, keys["master"]
            ),
        }
        status, answer = await _post(client, "/_matrix/client/v3/keys/device_signing/upload", body, as_token)
        if status != 200:
            raise CrossSigningError("cross-signing keys of %s refused: %s %s" % (user_id, status, answer))
        save_keys(store, user_id, pickle_key, keys)
    # The device's keys exactly as the homeserver holds them, signed by the self-signing key.
    status, answer = await _post(
        client, "/_matrix/client/v3/keys/query", {"device_keys": {user_id: [device_id]}}, None
    )
    try:
        device_keys = answer["device_keys"][user_id][device_id]
    except (KeyError, TypeError):
        raise CrossSigningError(
            "the homeserver has no keys for device %s of %s" % (device_id, user_id)
        ) from None
    device_keys = {k: v for k, v in device_keys.items() if k not in ("unsigned",)}
    if public_b64(keys["self_signing"]) in json.dumps(device_keys.get("signatures", {})):
        return public_b64(keys["master"])
    signed = sign_json(device_keys, user_id, keys["self_signing"])
    ssk_sig = {
        "ed25519:" + public_b64(keys["self_signing"]): signed["signatures"][user_id][
            "ed25519:" + public_b64(keys["self_signing"])
        ]
    }
    status, answer = await _post(
        client,
        "/_matrix/client/v3/keys/signatures/upload",
        {
            user_id: {
                device_id: {
                    **{k: v for k, v in device_keys.items() if k != "signatures"},
                    "signatures": {user_id: ssk_sig},
                }
            }
        },
        as_token,
    )
    failures = answer.get("failures") if isinstance(answer, dict) else None
    if status != 200 or failures:
        raise CrossSigningError("device signature of %s refused: %s %s" % (user_id, status, answer))
    if fresh:
        log.info("%s: cross-signing identity made, master key %s", user_id, public_b64(keys["master"]))
    return public_b64(keys["master"])
