#!/usr/bin/env bash
# The main job end to end: build a DwarFS layer of SRC with fim's Python writer,
# inspect and verify it, mount it with fim's Python reader and compare the mount
# with the source, byte for byte.
set -euo pipefail
SRC=${1:-/usr/share/doc}
WORK=${2:-/tmp/fim-demo}
FIM=${FIM:-fim}
IMG=$WORK/layer.dwarfs
MNT=$WORK/mnt

mkdir -p "$WORK" "$MNT"
if mountpoint -q "$MNT"; then "$FIM" umount "$MNT"; fi
trap 'mountpoint -q "$MNT" && "$FIM" umount "$MNT"' EXIT

echo "== fim create $SRC $IMG"
"$FIM" create "$SRC" "$IMG"
echo "== fim info"
"$FIM" info "$IMG" | sed -n '1,12p'
echo "== fim check --full"
"$FIM" check --full "$IMG"
echo "== fim ls -l / (first entries)"
"$FIM" ls -l "$IMG" / | head -n 8
echo "== fim mount $IMG $MNT"
"$FIM" mount "$IMG" "$MNT"
echo "== diff -r $SRC $MNT"
diff -r --no-dereference "$SRC" "$MNT"
echo "identical: $(find "$MNT" | wc -l) entries"
"$FIM" umount "$MNT"
echo "== done"
