#!/usr/bin/env bash
# Create .venv and install everything lowbw and its tests need.
# Called by `make` targets; safe to run again (it only adds what is missing).
# LOWBW_INSTALL=runtime (`make install`): lowbw and its runtime dependencies only,
# no test extras, no Debian packages, no MicroPython stubs.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
INSTALL=${LOWBW_INSTALL:-test}
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      PYTHON=$candidate
      break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "lowbw needs Python >= 3.11; none found on PATH" >&2
  exit 1
fi

if [ "$INSTALL" = runtime ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  # Editable, as `make test` installs it: one .venv serves both, and `make test`
  # later only adds the test extras.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e .
  exit 0
fi

# Debian packages the tests use (the MQTT broker), only when we may install them.
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package mosquitto" >&2
    (apt-get install -y -q mosquitto >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q mosquitto >/dev/null; }) ||
      echo "warning: could not install mosquitto; MQTT tests fall back to amqtt" >&2
  else
    echo "note: mosquitto missing and not root; MQTT tests fall back to amqtt" >&2
  fi
fi

# PostgreSQL for the registry tests on both engines (lowbw.testing.postgres runs
# initdb/pg_ctl on a temporary directory); Debian keeps the binaries off PATH.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package postgresql" >&2
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null; }) ||
      echo "warning: could not install postgresql; the PostgreSQL registry tests are skipped" >&2
  else
    echo "note: postgresql missing and not root; the PostgreSQL registry tests are skipped" >&2
  fi
fi

# nginx terminates TLS in front of Synapse for bench/chat_session.py's HTTPS baseline.
# Debian puts it in /usr/sbin, which is not on every PATH.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package nginx" >&2
    (apt-get install -y -q nginx >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q nginx >/dev/null; }) ||
      echo "warning: could not install nginx; bench/chat_session.py cannot run its HTTPS baseline" >&2
  else
    echo "note: nginx missing and not root; bench/chat_session.py cannot run its HTTPS baseline" >&2
  fi
fi

# tshark runs the Wireshark dissector's tests (contrib/wireshark/lowbw.lua) and
# checks radio_sim's pcap. Preseed the debconf question so the install never prompts.
if ! command -v tshark >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package tshark" >&2
    if command -v debconf-set-selections >/dev/null 2>&1; then
      echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections || true
    fi
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q tshark >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q tshark >/dev/null; }) ||
      echo "warning: could not install tshark; the Wireshark dissector tests are skipped" >&2
  else
    echo "note: tshark missing and not root; the Wireshark dissector tests are skipped" >&2
  fi
fi

# Headless Chromium renders the proxy's status page in tests/proxy/test_status_page.py
# (driven over the DevTools Protocol: no Playwright, no browser download).
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/lib/chromium/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package chromium" >&2
    (DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }) ||
      echo "warning: could not install chromium; the status page browser tests are skipped" >&2
  else
    echo "note: chromium missing and not root; the status page browser tests are skipped" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
# MicroPython type stubs shadow the standard library's, so they live apart.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade \
  --target .stubs/unix micropython-unix-stubs
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade \
  --target .stubs/esp32 micropython-esp32-stubs
