#!/usr/bin/env bash
# python_test.sh BUILD_DIR -- the psd Python package (python/) as a user
# installs it: a virtual environment made with Debian's python3 and its
# system packages (numpy, torch, pytest come from Debian), the package
# installed into it with pip from the repository (no package index: pip
# --no-index), linked against BUILD_DIR's libpsd, then its pytest suite
# (python/tests) against BUILD_DIR's psd. Small data only.
#
# Exits 0 on success, 1 on failure, 77 (skip) when Debian's python3, numpy
# or pytest is not installed (tests/run.sh installs them).
set -euo pipefail
. "$(dirname "$0")/testlib.sh"

BUILD=$(cd "${1:?usage: tests/python_test.sh BUILD_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3
if ! "$PY" -c 'import numpy, pytest, venv, setuptools, wheel' 2>/dev/null; then
  echo "python_test: SKIP: Debian's python3 with numpy, pytest, venv, setuptools and wheel is needed"
  exit 77
fi

t_tmpdir python_test
trap 't_tmp_done $?' EXIT
VENV=$TMP/venv
"$PY" -m venv --system-site-packages "$VENV"
PSD_BUILD_DIR=$BUILD "$VENV/bin/pip" install -q --no-index --no-build-isolation "$ROOT/python" \
  >"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log"; exit 1; }
# From outside the source tree, so that `import psd` is the installed package.
cd "$TMP"
PSD_BIN=$BUILD/server/psd PSD_TEST_WAIT_S=$T_WAIT \
  "$VENV/bin/python" -m pytest -q -s -p no:cacheprovider "$ROOT/python/tests" "$@"
