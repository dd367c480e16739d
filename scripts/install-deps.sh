#!/usr/bin/env bash
# Install what fim needs on a Debian/Ubuntu machine, then the Python venv.
# Idempotent: packages already present are not reinstalled; nothing is downloaded
# from anywhere but the distribution's and PyPI's package indexes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

# command -> Debian package
declare -A need=(
  [fusermount3]=fuse3
  [bwrap]=bubblewrap
  [fuse-overlayfs]=fuse-overlayfs
  [unionfs-fuse]=unionfs-fuse
  [mksquashfs]=squashfs-tools
  [squashfuse]=squashfuse
  [setfattr]=attr
  [bash-static]=bash-static
  [debootstrap]=debootstrap
  [update-mime-database]=shared-mime-info
  [desktop-file-validate]=desktop-file-utils
  [tmux]=tmux            # tests: an interactive shell in a real terminal
  [gcc]=gcc              # tests: the static ioctl attacker (with libc6-dev's libc.a)
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
# `fim build blueprint` needs the static busybox; the dynamic `busybox` package
# installs the same command name, so ask dpkg for the package itself.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" \
  || missing+=(busybox-static)
# the tests of remote layers serve them with nginx on loopback (/usr/sbin: not on a
# normal user's PATH, so ask dpkg); Debian 13 has no nginx-light: its nginx then
if ! dpkg-query -W -f='${Status}' nginx-light nginx 2>/dev/null | grep -q "ok installed"; then
  if apt-cache show nginx-light >/dev/null 2>&1; then missing+=(nginx-light); else missing+=(nginx); fi
fi
[ -f "/usr/lib/$(gcc -print-multiarch 2>/dev/null)/libc.a" ] || missing+=(libc6-dev)
# grep reads all of it: with pipefail, -q would stop early and ldconfig's SIGPIPE reads as
# "missing" (apt-get then ran on every make)
ldconfig -p 2>/dev/null | grep 'libfuse3\.so\.3' >/dev/null || missing+=(libfuse3-3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv python3-pip)

if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
stamp="$VENV/.fim-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e '.[test,build]'
  touch "$stamp"
fi
