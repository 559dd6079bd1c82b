#!/usr/bin/env bash
# tests/run.sh -- the whole psd test suite, from a fresh Debian 12 machine.
#
#   ./tests/run.sh            everything: build + ctest (and the data-path
#                             tests again over TCP only), ASan/UBSan build +
#                             ctest, valgrind on the daemon, libFuzzer on the
#                             wire parsers, ThreadSanitizer
#                             on the multithreaded client test, Docker test
#   ./tests/run.sh --quick    build + ctest only
#
# Installs the Debian packages it needs when they are missing (apt-get; run
# as root or with sudo available). Stages print a banner; the first failure
# stops the run with a non-zero exit.
#
# Every test writes its logs under one directory made for the run
# (PSD_TEST_TMPDIR, exported to the tests): removed when the run passes,
# kept and named when it fails. No test decides anything by how fast the
# machine is (see README, Tests).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
QUICK=0
[[ ${1:-} == --quick ]] && QUICK=1
JOBS=$(nproc 2>/dev/null || echo 2)

stage() { printf '\n==== %s ====\n' "$*"; }

PSD_TEST_TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/psd-tests.XXXXXX")
chmod 755 "$PSD_TEST_TMPDIR" # tests may run psd as another user inside
export PSD_TEST_TMPDIR
finish() {
  local rc=$?
  if ((rc == 0)); then
    rm -rf "$PSD_TEST_TMPDIR"
  else
    echo "run.sh: failed (exit $rc); test logs kept in $PSD_TEST_TMPDIR" >&2
  fi
}
trap finish EXIT

PKGS=(build-essential cmake pkg-config libuv1-dev libprotobuf-c-dev protobuf-c-compiler
      check zlib1g-dev libopenblas-dev libsodium-dev dataset-fashion-mnist valgrind clang
      libclang-rt-14-dev iproute2 docker.io mmdebstrap docker-compose gnuplot-nox
      procps psmisc python3 nftables gcc-s390x-linux-gnu libc6-dev-s390x-cross qemu-user
      libhttp-parser-dev libsodium-dev prometheus tmux
      python3-dev python3-venv python3-setuptools python3-wheel python3-numpy python3-pytest
      python3-torch)
missing=()
for p in "${PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  stage "installing Debian packages: ${missing[*]}"
  SUDO=; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

stage "build (RelWithDebInfo) and ctest"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$JOBS"
(cd build && ctest --output-on-failure -j1)

stage "the client and cluster tests again over TCP only (PS_LANE_MB=0: no shared-memory lanes)"
(cd build && PS_LANE_MB=0 ctest --output-on-failure -R '^(test_client_integration|test_cluster|test_e2e_math)$' -j1)
((QUICK)) && { echo "quick run: all passed"; exit 0; }

stage "ASan + UBSan build and ctest (unit + integration)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DPSD_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$JOBS"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
   ctest --output-on-failure -L 'unit|integration' -E 'train_small|install_test' -j1)

stage "valgrind: the daemon under memcheck through the protocol tests"
# Any invalid access or leak makes valgrind exit 99, which the tests see as
# an unclean shutdown.
(cd build && PSD_WRAPPER="valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect" \
   ./tests/test_server)

stage "libFuzzer: the wire parsers (fuzz_wire from valid seed frames, 300000 inputs)"
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DPSD_FUZZ=ON -DCMAKE_C_COMPILER=clang >/dev/null
cmake --build build-fuzz -j"$JOBS" --target fuzz_wire fuzz_seeds
rm -rf build-fuzz/corpus && mkdir -p build-fuzz/corpus
build-fuzz/tests/fuzz_seeds build-fuzz/corpus
FUZZ_LOG=$PSD_TEST_TMPDIR/fuzz.log
if ! (cd build-fuzz && ./tests/fuzz_wire -runs=300000 -max_len=8192 \
        -artifact_prefix="$PSD_TEST_TMPDIR/" corpus >"$FUZZ_LOG" 2>&1); then
  tail -n 80 "$FUZZ_LOG"
  echo "fuzz_wire found a crash (the input is in $PSD_TEST_TMPDIR, see above)"
  exit 1
fi
tail -n 1 "$FUZZ_LOG"

if [[ -f tests/test_client_integration.c ]]; then
  stage "ThreadSanitizer: the client library under many threads, the shard's helper and spare threads"
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DPSD_TSAN=ON -DCMAKE_C_COMPILER=clang >/dev/null
  cmake --build build-tsan -j"$JOBS" --target test_client_integration test_math test_spare psd
  (cd build-tsan && TSAN_OPTIONS=halt_on_error=1 ./tests/test_spare)
  (cd build-tsan && TSAN_OPTIONS=halt_on_error=1 CK_RUN_CASE=threads ./tests/test_client_integration)
  (cd build-tsan && TSAN_OPTIONS=halt_on_error=1 CK_RUN_CASE=helper ./tests/test_math)
fi

if [[ -x tests/docker_test.sh ]]; then
  stage "Docker deployment"
  rc=0; tests/docker_test.sh || rc=$?
  if ((rc == 77)); then echo "docker test skipped (see above)"; elif ((rc)); then exit $rc; fi
fi
echo; echo "all test stages passed"
