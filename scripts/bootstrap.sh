#!/usr/bin/env bash
# Installs everything Seawall needs on a fresh Debian machine, idempotently:
# Debian packages, kernel headers for bcc, and a virtualenv with the pinned
# Python dependencies that also sees Debian's bcc module (and nothing else of
# Debian's Python packages). Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'bootstrap: %s\n' "$*" >&2; }

APT_PACKAGES=(
  bpfcc-tools python3-bpfcc libbpf-dev clang llvm   # compile and load the XDP program
  iproute2 ethtool tcpdump nftables xdp-tools fastnetmon  # lab, deployment checks, comparisons
  snmptrapd snmp rsyslog rsyslog-openssl postgresql chromium  # real receivers, browser for tests
  openssl                                                   # test certificates for SecureWatch's HTTPS
  bird2                    # the independent BGP peer of the escalation tests (ExaBGP, Seawall's speaker, is pinned in requirements.lock)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian enables FastNetMon's own service; Seawall runs it only inside its
# comparison benchmark (nothing sent anywhere), never as a system daemon.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled fastnetmon >/dev/null 2>&1; then
  systemctl disable --now fastnetmon >/dev/null 2>&1 || true
fi
# Likewise BIRD: the escalation tests run their own BIRD in a namespace; no system daemon.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled bird >/dev/null 2>&1; then
  systemctl disable --now bird >/dev/null 2>&1 || true
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Prefer the running
# kernel's own headers; when Debian does not package them (custom kernels),
# link Debian's generic amd64 headers there, which compile XDP programs fine.
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build/include" ]; then
  if apt-get install -y -qq "linux-headers-$kver" >/dev/null 2>&1; then
    say "installed linux-headers-$kver"
  else
    arch=$(dpkg --print-architecture)
    dpkg-query -W -f='${Status}' "linux-headers-$arch" 2>/dev/null | grep -q "install ok installed" \
      || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "linux-headers-$arch" >/dev/null; }
    hdr=$(ls -d /usr/src/linux-headers-*-"$arch" | sort -V | tail -n 1)
    common=${hdr%-"$arch"}-common
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$hdr" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
    say "no headers packaged for kernel $kver: linked $(basename "$hdr") as its build headers"
  fi
fi

# The virtualenv: pinned dependencies, the project itself editable with its extras, and a .pth
# that exposes only Debian's bcc package (bcc is not on PyPI).
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating virtualenv .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.requirements.sha
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing pinned Python dependencies"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
  # The project itself, editable, with the extras the tests and the demo use (pyproject.toml:
  # lab, bench, test); the lock stays the constraint, so nothing moves off its pin.
  .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e ".[lab,bench,test]"
  echo "$want" > "$stamp"
fi
.venv/bin/python scripts/link_bcc.py
