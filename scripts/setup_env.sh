#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment at .venv and install unip2 into it.
# Reinstalls only when pyproject.toml changed. UNIP2_VENV_DIR puts the environment elsewhere (CI caches
# it keyed by the dependency pins) and links .venv to it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
venv_dir=${UNIP2_VENV_DIR:-.venv}

if [ "$venv_dir" != ".venv" ]; then
  mkdir -p "$(dirname "$venv_dir")"
  if [ ! -L .venv ] || [ "$(readlink .venv)" != "$venv_dir" ]; then
    rm -rf .venv
    ln -s "$venv_dir" .venv
  fi
fi

if [ ! -x "$venv_dir/bin/python" ]; then
  echo "[setup] creating virtual environment in $venv_dir"
  "$PYTHON" -m venv "$venv_dir"
fi

# pip, quiet, without the "Location ... is ignored" lines some machines' pip configs print per package.
pip_install() {
  "$venv_dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location '.*' is ignored" || true; }
}

stamp="$venv_dir/.unip2-installed"
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing dependencies (first time: several minutes, ~6 GB)"
  # torch and torchvision first and pinned, or the resolver picks other multi-GB builds.
  torch_pins=$(grep -oE '"torch(vision)?==[^"]+"' pyproject.toml | tr -d '"' | tr '\n' ' ')
  pip_install $torch_pins
  pip_install -e '.[test]'
  echo "$want" > "$stamp"
else
  # The project itself is installed editable: re-link it in case this checkout moved.
  pip_install --no-deps -e . >/dev/null
fi
