#!/usr/bin/env bash
# ckpt_endian.sh -- the checkpoint format is the same on a big-endian host:
# tests/ckpt_endian.c built natively and for s390x (under qemu-user) must
# write the same bytes, read them back, and read tests/data/ckpt-v1.psd
# (written on x86) to the same values. Skipped (77) without
# s390x-linux-gnu-gcc and qemu-s390x (Debian: gcc-s390x-linux-gnu,
# libc6-dev-s390x-cross, qemu-user).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CROSS=${CROSS_CC:-s390x-linux-gnu-gcc}
if ! command -v "$CROSS" >/dev/null || ! command -v qemu-s390x >/dev/null; then
  echo "ckpt_endian: skipped (needs $CROSS and qemu-s390x)"
  exit 77
fi
T=$(mktemp -d "${PSD_TEST_TMPDIR:-${TMPDIR:-/tmp}}/ckpt_endian.XXXXXX")
trap 'rm -rf "$T"' EXIT
cat >"$T/zlib.h" <<'H'
/* A stand-in for zlib.h: the program brings its own crc32. */
typedef unsigned long uLong;
typedef unsigned int uInt;
typedef unsigned char Bytef;
#define Z_NULL 0
uLong crc32(uLong crc, const Bytef *buf, uInt len);
H
SRC=("$ROOT/tests/ckpt_endian.c" "$ROOT/server/ckpt_format.c")
FLAGS=(-O1 -Wall -Werror -D_GNU_SOURCE -I"$T" -I"$ROOT/server")
${CC:-cc} "${FLAGS[@]}" "${SRC[@]}" -o "$T/native"
"$CROSS" "${FLAGS[@]}" -static "${SRC[@]}" -o "$T/s390x"
FIX="$ROOT/tests/data/ckpt-v1.psd"
"$T/native" "$T/native.bin" "$FIX" >"$T/native.txt"
qemu-s390x "$T/s390x" "$T/s390x.bin" "$FIX" >"$T/s390x.txt"
grep -q '^host: big-endian' "$T/s390x.txt"
grep -q '^done: ok' "$T/s390x.txt"
grep -q '^verify .*: 0 $' "$T/s390x.txt"
diff <(sed 1d "$T/native.txt") <(sed 1d "$T/s390x.txt")
cmp "$T/native.bin" "$T/s390x.bin"
echo "ckpt_endian: s390x writes the same bytes and reads the same values"
