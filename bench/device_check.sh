#!/usr/bin/env bash
# The GPU device check in one call (at most 8 minutes): bench/device_check.py, after installing the wheels
# carried in .whl/ (see docs/benchmarks.md, "Full size"). Usage, from the repository root:
#   bash bench/device_check.sh OUT_DIR [device_check.py options, e.g. --official-root .eg3d/eg3d]
# The report is OUT_DIR/device_check.json; a short table is printed last.
set -u
out="${1:-${OUT:-device-check-out}}"
shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ADAPT3D_OFFLINE=1
site=""
if compgen -G ".whl/*.whl" > /dev/null; then
  site=/tmp/adapt3d-site
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
      > "$out/pip.log" 2>&1; then
    echo "installed $(ls .whl/*.whl | wc -l) carried wheels into $site"
  else
    echo "could not install the carried wheels (see $out/pip.log); going on with what is installed"
  fi
  bpe=$(ls .whl/open_clip_torch-*.whl 2>/dev/null | head -1)
  [ -n "$bpe" ] && export ADAPT3D_CLIP_BPE="$PWD/$bpe"   # CLIP's vocabulary for the tokenizers (read, not installed)
else
  echo "no .whl/ folder: using the packages installed here"
fi
export PYTHONPATH="$PWD/src${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --kill-after=10 470 python3 bench/device_check.py --out "$out" --budget-s 450 "$@"
