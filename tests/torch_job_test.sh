#!/usr/bin/env bash
# torch_job_test.sh BUILD_DIR -- the PyTorch job on a small subset:
# deploy/torch-vs-ddp.sh with 1 epoch of 4000 images (4 workers, 2 shards):
# psd.torch.ServerOptimizer and DistributedOptimizer through
# run-local.sh --trainer torch / torch-dist, and DDP over gloo. Asserts
# that each wrote its row and reached test accuracy >= 0.60 on 1000 test
# images (chance is 0.10), and that the three results files exist.
#
# Exits 0 on success, 1 on failure, 77 (skip) without the dataset or
# Debian's python3 with torch, numpy, venv, setuptools and wheel.
set -euo pipefail
. "$(dirname "$0")/testlib.sh"

BUILD=$(cd "${1:?usage: tests/torch_job_test.sh BUILD_DIR}" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=/usr/share/datasets/fashion-mnist
if [[ ! -e $DATA/train-images-idx3-ubyte.gz && ! -e $DATA/train-images-idx3-ubyte ]]; then
  echo "torch_job_test: SKIP: no Fashion-MNIST in $DATA (install dataset-fashion-mnist)"
  exit 77
fi
if ! /usr/bin/python3 -c 'import numpy, torch, venv, setuptools, wheel' 2>/dev/null; then
  echo "torch_job_test: SKIP: Debian's python3 with numpy, torch, venv, setuptools and wheel is needed"
  exit 77
fi
command -v gnuplot >/dev/null || { echo "torch_job_test: SKIP: no gnuplot"; exit 77; }

t_tmpdir torch_job_test
trap 't_tmp_done $?' EXIT
export PSD_VENV=$TMP/venv
/usr/bin/python3 -m venv --system-site-packages "$PSD_VENV"
PSD_BUILD_DIR=$BUILD "$PSD_VENV/bin/pip" install -q --no-index --no-build-isolation "$ROOT/python" \
  >"$TMP/pip.log" 2>&1 || { cat "$TMP/pip.log"; exit 1; }
export PS_TIMEOUT_MS=$((T_WAIT * 1000)) # a sync call waits for the slowest worker
"$ROOT/deploy/torch-vs-ddp.sh" --no-build --build-dir "$BUILD" --epochs 1 \
  --train-limit 4000 --test-limit 1000 --out "$TMP/results" | tee "$TMP/table.md"

fail() { echo "torch_job_test: FAIL: $*" >&2; exit 1; }
CSV=$TMP/results/torch-vs-ddp.csv
[[ -s $TMP/results/torch-vs-ddp.png ]] || fail "no png"
for c in psd-server psd-dist ddp; do
  acc=$(awk -F, -v c="$c" '$1 == c { a = $4 } END { print a }' "$CSV")
  [[ -n $acc ]] || fail "$c wrote no row"
  awk -v a="$acc" 'BEGIN { exit !(a >= 0.60) }' || fail "$c reached only $acc"
  echo "torch_job_test: $c test accuracy $acc"
done
