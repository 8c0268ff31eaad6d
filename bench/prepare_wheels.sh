#!/usr/bin/env bash
# Fetch, here, the wheels that bench/device_check.sh installs on a GPU machine that has torch + CUDA, transformers,
# accelerate and torchvision but not the rest of adapt3d's dependencies (x86-64 Linux, CPython 3.12, no network
# there). Usage, from the repository root (where pip reaches a package index):
#   bash bench/prepare_wheels.sh [FOLDER]        # default .whl (ignored by git); prints the total size
# Then run the check with that folder carried along (`.whl` travels with the working tree, 64 MiB at most):
#   bash bench/device_check.sh "$OUT"
# Versions are the ones the test suite runs with here (as installed); the machine's own transformers,
# huggingface_hub, accelerate, safetensors, numpy, scipy, Pillow, opencv and pytest are used as they are.
# open_clip_torch is carried only for CLIP's BPE vocabulary file (read from the wheel, never imported).
# imageio-ffmpeg is not carried: its wheel (68 MB, an ffmpeg binary inside) alone exceeds what travels; no step
# of the device check writes videos, and the check lists it among the missing packages.
set -euo pipefail
dest="${1:-.whl}"
mkdir -p "$dest"
wheels=(
  diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0 zipp==4.1.2
  tyro==1.0.17 docstring_parser==0.18.0 typeguard==4.6.1 typing_extensions==4.16.0
  trimesh==5.2.0 PyMCubes==0.1.6
  open_clip_torch==3.3.0
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${wheels[@]}"
ls -1 "$dest"
du -sh "$dest"
