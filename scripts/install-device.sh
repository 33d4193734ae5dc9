#!/usr/bin/env bash
# Installs Auth Face on a door device (Debian-based: Raspberry Pi OS, Ubuntu/Jetson Linux).
#
#   sudo scripts/install-device.sh --config my-door.yaml [--kiosk | --turnstile] [--port 8080]
#
# It installs system packages, a service user, the service in /opt/authface (and the Electron
# kiosk with --kiosk), the device configuration, the systemd units and the camera udev rule,
# creates the device's tenant and prints its API key once, then runs `authface doctor`.
# --dry-run prints what it would do without changing anything.
set -euo pipefail

PREFIX=/opt/authface
ETC=/etc/authface
DATA=/var/lib/authface
SERVICE_USER=authface
PORT=8080
CONFIG=""
MODE=service
KIOSK=0
DRY=0

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --kiosk) KIOSK=1; shift ;;
    --turnstile) MODE=turnstile; shift ;;
    --port) PORT="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install-device: unknown option $1" >&2; usage 2 ;;
  esac
done

SRC=$(cd "$(dirname "$0")/.." && pwd)
run() { if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi; }
step() { echo "== $*"; }
fail() { echo "install-device: $*" >&2; exit 1; }

[ -n "$CONFIG" ] || fail "--config FILE is required (start from firmware-config/examples/)"
[ -f "$CONFIG" ] || fail "no such file: $CONFIG"
[ "$DRY" = 1 ] || [ "$(id -u)" = 0 ] || fail "run as root (sudo)"
command -v node >/dev/null || fail "Node.js 20 or newer is needed (https://nodejs.org or your distribution)"
NODE_MAJOR=$(node -p 'process.versions.node.split(".")[0]')
[ "$NODE_MAJOR" -ge 20 ] || fail "Node.js 20 or newer is needed, found $(node -v)"
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' ||
  fail "Node.js 20.19 or newer is needed, found $(node -v)"

step "system packages"
PKGS=(fswebcam build-essential python3 rsync)
[ "$KIOSK" = 1 ] && PKGS+=(cage fonts-dejavu-core)
run apt-get update -qq
run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PKGS[@]}"

step "service user $SERVICE_USER"
getent group gpio >/dev/null || run groupadd --system gpio
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
  run useradd --system --home-dir "$DATA" --shell /usr/sbin/nologin --groups video,gpio "$SERVICE_USER"
fi
[ "$KIOSK" = 1 ] && run usermod -aG render,input "$SERVICE_USER"

step "the service in $PREFIX (models are copied from npm packages and checked)"
run mkdir -p "$PREFIX"
run rsync -a --delete --exclude node_modules --exclude dist --exclude data --exclude artifacts --exclude .git "$SRC/" "$PREFIX/"
run bash -c "cd '$PREFIX' && npm ci --no-audit --no-fund && npm prune --omit=dev --no-audit --no-fund"
if [ "$KIOSK" = 1 ]; then
  # Electron's own packages declare Node 22.12; its installer runs on Node 20 (npm only warns), and
  # the kiosk's postinstall fetches the Electron binary now (it brings its own Node), not at boot
  run bash -c "cd '$PREFIX/kiosk' && npm ci --no-audit --no-fund"
fi

step "configuration in $ETC, data in $DATA"
run install -d -m 0750 -o root -g "$SERVICE_USER" "$ETC"
run install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA"
run install -m 0640 -o root -g "$SERVICE_USER" "$CONFIG" "$ETC/device.yaml"
KIOSK_DOOR=$(node --input-type=module -e "
  import { parse } from '$SRC/node_modules/yaml/dist/index.js';
  import fs from 'node:fs';
  const c = parse(fs.readFileSync(process.argv[1], 'utf8'));
  console.log(c.kiosk?.door ?? c.doors[0].id);" "$CONFIG" 2>/dev/null || echo main)
ENV_FILE=$(cat <<ENV
AUTHFACE_DATA_DIR=$DATA
AUTHFACE_DEVICE_CONFIG=$ETC/device.yaml
HOST=127.0.0.1
PORT=$PORT
PUBLIC_URL=http://127.0.0.1:$PORT
AUTHFACE_KIOSK_URL=http://127.0.0.1:$PORT/kiosk?door=$KIOSK_DOOR
AUTHFACE_KIOSK_SECRET_FILE=$DATA/kiosk.secret
ENV
)
if [ "$DRY" = 1 ]; then echo "+ write $ETC/authface.env:"; echo "$ENV_FILE" | sed 's/^/    /'; else
  echo "$ENV_FILE" > "$ETC/authface.env"; chmod 0640 "$ETC/authface.env"; chgrp "$SERVICE_USER" "$ETC/authface.env"; fi

step "the authface command on PATH: this install's, with the service's environment, as its user"
# never `npx authface` on a device: outside a project npx resolves the name at the npm registry
WRAPPER=$(cat <<WRAP
#!/bin/sh
# Auth Face's own command (scripts/install-device.sh): this device's data directory and device file
set -a; . $ETC/authface.env; set +a
if [ "\$(id -u)" = 0 ]; then exec runuser -u $SERVICE_USER -- node $PREFIX/bin/authface.js "\$@"; fi
exec node $PREFIX/bin/authface.js "\$@"
WRAP
)
if [ "$DRY" = 1 ]; then echo "+ write /usr/local/bin/authface:"; echo "$WRAPPER" | sed 's/^/    /'; else
  echo "$WRAPPER" > /usr/local/bin/authface; chmod 0755 /usr/local/bin/authface; fi

step "tenant and API key (shown once, here only: never in the journal)"
AS_USER=(runuser -u "$SERVICE_USER" -- env AUTHFACE_DATA_DIR="$DATA" LOG_LEVEL=warn node "$PREFIX/bin/authface.js")
if [ "$DRY" = 1 ] || [ ! -f "$DATA/authface.db" ]; then
  run "${AS_USER[@]}" tenant create --name default --allowed-origin "http://127.0.0.1:$PORT" --liveness active
fi

step "systemd units and the camera rule"
for unit in authface.service authface-turnstile.service authface-kiosk.service; do
  run install -m 0644 "$PREFIX/firmware-config/systemd/$unit" /etc/systemd/system/
done
run install -m 0644 "$PREFIX/firmware-config/udev/99-authface-camera.rules" /etc/udev/rules.d/
run udevadm control --reload
run udevadm trigger --subsystem-match=video4linux
run systemctl daemon-reload
if [ "$MODE" = turnstile ]; then
  run systemctl enable --now authface-turnstile.service
else
  run systemctl enable --now authface.service
fi
[ "$KIOSK" = 1 ] && run systemctl enable --now authface-kiosk.service

step "doctor"
run runuser -u "$SERVICE_USER" -- env $(echo "$ENV_FILE" | tr '\n' ' ') node "$PREFIX/bin/authface.js" doctor || true
echo "done: follow the logs with journalctl -fu authface; \`authface doctor\` checks the device again"
