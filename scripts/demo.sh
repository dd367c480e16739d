#!/usr/bin/env bash
# The main job end to end, as a FlatImage user does it: build an image, run programs
# in it, install something as root inside, commit it as a layer, remove the writable
# data, and run the committed program again (then rename the image into an app).
#
# With root and debootstrap (and Debian's package registry reachable): a Debian image
# and `apt-get install cowsay`. Otherwise the blueprint form (busybox + bash): the
# installed "program" is a script written with fim-root.
set -euo pipefail
WORK=${1:-/tmp/fim-demo}
FIM=${FIM:-fim}
KIND=${DEMO:-auto}   # auto | debian | blueprint

rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
step() { printf '\n== %s\n' "$*"; }

if [ "$KIND" = auto ]; then
  KIND=blueprint
  if [ "$(id -u)" -eq 0 ] && command -v debootstrap >/dev/null; then KIND=debian; fi
fi

if [ "$KIND" = debian ]; then
  step "fim build debian --variant minbase -o debian.flatimage (debootstrap: a few minutes)"
  if ! "$FIM" build debian --variant minbase -o debian.flatimage; then
    echo "debootstrap could not build a Debian root here: showing the blueprint form"
    KIND=blueprint
  fi
fi

if [ "$KIND" = debian ]; then
  APP=./debian.flatimage
  step "$APP fim-exec cat /etc/debian_version"
  "$APP" fim-exec cat /etc/debian_version
  step "$APP fim-perms add network; fim-root apt-get install -y cowsay"
  "$APP" fim-perms add network
  "$APP" fim-root sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends cowsay >/dev/null'
  PROGRAM=/usr/games/cowsay
else
  step "fim build blueprint -o app.flatimage"
  "$FIM" build blueprint -o app.flatimage
  APP=./app.flatimage
  step "$APP fim-exec sh -c 'echo hello from \$FIM_DIST, uid \$(id -u)'"
  "$APP" fim-exec sh -c 'echo hello from $FIM_DIST, uid $(id -u)'
  step "$APP fim-root: install /usr/bin/moo"
  "$APP" fim-root sh -c 'printf "#!/bin/sh\necho \"< \$* >\"\n" > /usr/bin/moo && chmod 755 /usr/bin/moo'
  PROGRAM=/usr/bin/moo
fi

step "$APP fim-layer commit binary"
"$APP" fim-layer commit binary
step "rm -rf .${APP#./}.data   # the writable layer is gone; the program is in the image now"
rm -rf ".${APP#./}.data"
"$APP" fim-layer list
step "$APP fim-exec $PROGRAM hello"
"$APP" fim-exec "$PROGRAM" hello
step "$APP fim-boot set $PROGRAM && mv $APP moo.flatimage && ./moo.flatimage moo"
"$APP" fim-boot set "$PROGRAM"
mv "$APP" moo.flatimage
./moo.flatimage moo
step "done: $WORK/moo.flatimage"
