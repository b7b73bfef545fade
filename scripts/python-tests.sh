#!/usr/bin/env bash
# The Python package's tests: a virtual environment in target-py/venv with maturin and pytest from PyPI,
# the wheel built by maturin (release profile, abi3, in target-py/ so it never waits on target/'s lock),
# installed into the environment, and pytest over crates/yaqa-py/python/tests. The SmolLM2 tests read
# ../shared/fixtures (SHARED=path overrides); with CI=true they fail if it is missing, else they are
# skipped. Needs python3 ≥ 3.9 (PYTHON=path overrides) and network access to PyPI and crates.io on the
# first run; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
target="$PWD/target-py"
venv="$target/venv"
wheels="$target/wheels"
export CARGO_TARGET_DIR="$target"

echo "== python: $("$python" --version) at $(command -v "$python")"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' || {
  echo "the yaqa package needs Python 3.9 or newer" >&2
  exit 1
}

if [[ ! -x $venv/bin/python ]]; then
  echo "== creating $venv"
  "$python" -m venv "$venv"
fi
echo "== pip install maturin pytest"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check maturin==1.16.0 pytest==9.2.0

echo "== maturin build --release (wheel into $wheels)"
rm -rf "$wheels"
"$venv/bin/maturin" build --release --locked -m crates/yaqa-py/Cargo.toml --out "$wheels" \
  --interpreter "$venv/bin/python"
wheel=$(ls "$wheels"/yaqa-*.whl)

echo "== pip install $wheel"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
  "$wheel"

echo "== pytest crates/yaqa-py/python/tests"
# From the tests' folder, so `import yaqa` finds the installed wheel, not the sources (which lack the
# extension module); no bytecode or cache files left in the work tree.
# The tests' temporary folders (about 4 GB of quantized SmolLM2 copies) go to one folder under
# target-py/, which pytest empties at the start of each run, instead of /tmp, where pytest keeps the last
# three runs' (12 GB filled this machine's disk in session 17).
export PYTHONDONTWRITEBYTECODE=1
basetemp="$target/pytest-tmp"
cd crates/yaqa-py/python/tests
"$venv/bin/python" -m pytest -p no:cacheprovider --basetemp="$basetemp" -v "$@" .
# Kept when a test fails (for a look at its files), removed after a passing run.
rm -rf "$basetemp"
