#!/usr/bin/env bash
# Sets up one TPU VM worker for lmjax (tpu.py setup runs it on every worker; safe to run again):
#   1. the repository at REF in $LMJAX_DIR (default ~/lmjax), cloned or updated;
#   2. a Python >= 3.12 for .venv: TPU VM images ship 3.10, so uv (installed with the image's pip if missing)
#      provides a managed CPython 3.12;
#   3. lmjax's pinned requirements in .venv, but jax as jax[tpu] of pyproject.toml's range: the newest release
#      whose libtpu the index serves (the pinned jax's libtpu may not be out yet); reinstalled only when the
#      requirement files change.
# usage: setup_worker.sh REPO_URL REF
set -euo pipefail
repo=${1:?usage: setup_worker.sh REPO_URL REF} ref=${2:?usage: setup_worker.sh REPO_URL REF}
dir=${LMJAX_DIR:-$HOME/lmjax}
export PATH="$HOME/.local/bin:$PATH"

if [ -d "$dir/.git" ]; then
  git -C "$dir" fetch --quiet origin
else
  git clone --quiet "$repo" "$dir"
fi
git -C "$dir" checkout --quiet "$ref"
cd "$dir"

new_enough() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }
if ! { [ -x .venv/bin/python ] && new_enough .venv/bin/python; }; then
  command -v uv >/dev/null || python3 -m pip install --quiet --user uv \
    || python3 -m pip install --quiet --user --break-system-packages uv  # newer images mark the system Python
  rm -rf .venv
  uv venv --quiet --seed --python 3.12 .venv
fi

want=$(cat requirements.txt requirements-nodeps.txt | sha256sum)
if [ "$want" != "$(cat .venv/.installed 2>/dev/null)" ]; then
  grep -v '^jax==' requirements.txt > .venv/requirements-tpu.txt
  uv pip install --quiet --python .venv/bin/python -r .venv/requirements-tpu.txt 'jax[tpu]>=0.11.1,<0.13'
  uv pip install --quiet --python .venv/bin/python --no-deps -r requirements-nodeps.txt
  echo "$want" > .venv/.installed
fi
echo "lmjax at $(git rev-parse --short HEAD) in $dir, $(.venv/bin/python --version)"
