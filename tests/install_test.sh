#!/usr/bin/env bash
# install_test.sh BUILD_DIR -- the worker library as an outside trainer sees
# it: install into a temporary prefix, then build a small program against it
# twice, with pkg-config and with CMake's find_package(psd), and run both
# against a real psd.
set -euo pipefail
. "$(dirname "$0")/testlib.sh"
BUILD=$(cd "${1:?usage: install_test.sh BUILD_DIR}" && pwd)
t_tmpdir install_test
PSD_PID=
cleanup() {
  local rc=$?
  trap - EXIT
  if [[ -n $PSD_PID ]]; then kill "$PSD_PID" 2>/dev/null; wait "$PSD_PID" 2>/dev/null || true; fi
  t_tmp_done "$rc"
  exit "$rc"
}
trap cleanup EXIT
fail() { echo "install_test: FAIL: $*" >&2; exit 1; }

cmake --install "$BUILD" --prefix "$TMP/prefix" >/dev/null || fail "cmake --install"
[[ -f $TMP/prefix/include/psd.h ]] || fail "psd.h not installed"
[[ -f $TMP/prefix/include/psd_types.h ]] || fail "psd_types.h (included by psd.h) not installed"

mkdir -p "$TMP/app"
cat >"$TMP/app/trainer.c" <<'C'
#include <psd.h>
#include <stdio.h>
int main(int argc, char **argv) {
  ps_client *c;
  if (ps_connect(&c, argv[1], NULL) != 0) { fprintf(stderr, "%s\n", ps_last_error()); return 1; }
  ps_tensor_spec s;
  ps_tensor_spec_init(&s, PS_INIT_ZEROS, PS_OPT_SGD);
  uint64_t shape[1] = {4};
  float g[4] = {1, 2, 3, 4}, w[4];
  uint64_t v;
  if (ps_create(c, "ext", shape, 1, &s) || ps_push_pull(c, "ext", g, w, 4, &v)) {
    fprintf(stderr, "%s\n", ps_errmsg(c));
    return 1;
  }
  printf("%llu %.3f\n", (unsigned long long)v, w[3]);
  return ps_close(c);
}
C
cat >"$TMP/app/CMakeLists.txt" <<'C'
cmake_minimum_required(VERSION 3.25)
project(ext C)
find_package(psd REQUIRED)
add_executable(trainer trainer.c)
target_link_libraries(trainer PRIVATE psd::psd_client)
C

LIBDIR=$(dirname "$(find "$TMP/prefix" -name 'libpsd.so*' | head -1)")
export PKG_CONFIG_PATH=$LIBDIR/pkgconfig
# shellcheck disable=SC2046
cc -o "$TMP/app/by-pkgconfig" "$TMP/app/trainer.c" $(pkg-config --cflags --libs psd) \
  -Wl,-rpath,"$LIBDIR" || fail "build with pkg-config"
cmake -S "$TMP/app" -B "$TMP/app/build" -DCMAKE_PREFIX_PATH="$TMP/prefix" >/dev/null ||
  fail "find_package(psd)"
cmake --build "$TMP/app/build" >/dev/null || fail "build with CMake"

"$BUILD/server/psd" --listen 127.0.0.1:0 2>"$TMP/psd.log" &
PSD_PID=$!
psd_up() { kill -0 "$PSD_PID" 2>/dev/null || fail "psd exited: $(cat "$TMP/psd.log")"; t_has_port "$TMP/psd.log"; }
t_wait_until "psd to listen" psd_up || fail "psd did not start"
PORT=$(t_port_of "$TMP/psd.log")
out1=$("$TMP/app/by-pkgconfig" "127.0.0.1:$PORT") || fail "pkg-config trainer failed"
out2=$("$TMP/app/build/trainer" "127.0.0.1:$PORT") || fail "CMake trainer failed"
[[ $out1 == "1 -0.040" && $out2 == "2 -0.080" ]] || fail "unexpected results '$out1' '$out2'"
echo "install_test: ok (pkg-config and find_package builds both ran against psd)"
