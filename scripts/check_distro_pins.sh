#!/usr/bin/env bash
# `make check-distro-pins`: proves that requirements/distro.txt (+ dev.txt) installs, as binary wheels only,
# on each distro the README names, beside that distro's own numpy, without the distro: uv resolves for
# another Python version and platform (pip's --python-version would still evaluate dependency markers with
# this machine's Python, so it cannot answer for 3.10 or 3.12).
# The resolved sets are written to build/distro-pins/<distro>.txt.
#
# As a control, requirements/runtime.txt (the wheels mode's numpy 2 pins) must FAIL for Humble: a check that
# cannot fail proves nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=build/distro-pins
mkdir -p "$OUT"

# distro  Python  glibc (manylinux tag)  numpy of the distro's python3-numpy
TARGETS=(
  "humble 3.10 2_35 1.21.5"
  "jazzy  3.12 2_39 1.26.4"
  "kilted 3.12 2_39 1.26.4"
)

resolve() {  # resolve OUTFILE PYTHON GLIBC NUMPY REQUIREMENT_FILES...
  local out=$1 python=$2 glibc=$3 numpy=$4
  shift 4
  local constraints="$OUT/numpy-$numpy.txt"
  echo "numpy==$numpy" > "$constraints"
  uv pip compile --system-certs --quiet --no-header --only-binary :all: --python-version "$python" \
    --python-platform "x86_64-manylinux_$glibc" -c "$constraints" "$@" -o "$out"
}

failed=0
for target in "${TARGETS[@]}"; do
  read -r distro python glibc numpy <<< "$target"
  if resolve "$OUT/$distro.txt" "$python" "$glibc" "$numpy" requirements/distro.txt requirements/dev.txt 2> "$OUT/$distro.err"; then
    echo "[distro-pins] $distro (Python $python, numpy $numpy, manylinux_$glibc): resolves ($(grep -c '==' "$OUT/$distro.txt") packages, $OUT/$distro.txt)"
  else
    echo "[distro-pins] $distro (Python $python, numpy $numpy): requirements/distro.txt does NOT resolve:" >&2
    cat "$OUT/$distro.err" >&2
    failed=1
  fi
done

if resolve "$OUT/control.txt" 3.10 2_35 1.21.5 requirements/runtime.txt 2> "$OUT/control.err"; then
  echo "[distro-pins] control: requirements/runtime.txt resolved for Python 3.10 with numpy 1.21.5; this check cannot tell good pins from bad" >&2
  failed=1
elif grep -q "No solution found" "$OUT/control.err"; then
  echo "[distro-pins] control: requirements/runtime.txt (numpy 2 pins) is refused for Humble, as it must be"
else
  echo "[distro-pins] control: uv failed for another reason than the pins:" >&2
  cat "$OUT/control.err" >&2
  failed=1
fi
exit $failed
