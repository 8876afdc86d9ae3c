#!/usr/bin/env bash
# Stage what the GPU check needs on a bare GPU machine that has PyTorch, Triton and Python 3.12
# but no internet, under .gpu/ (git-ignored through .git/info/exclude; the device tool carries
# it). Run from the repository root, on a machine that reaches PyPI:
#   bash benchmarks/gpu/prepare.sh [FLAME_SIGIR26_CHECKOUT]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/src
# RecBole and the small packages it imports that the GPU image lacks (numpy, scipy, pandas,
# tensorboard, ... are there); Python 3.12 wheels, no dependencies pulled in.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform any -d .gpu/whl \
    recbole==1.2.1 colorlog==4.7.2 texttable thop
# mamba-ssm's Python source: its SSD Triton kernel needs no compiled extension, and the package
# loads that module without running mamba_ssm/__init__ (which imports the extensions).
tmp=$(mktemp -d)
MAMBA_SKIP_CUDA_BUILD=TRUE python3 -m pip download -q --no-deps --no-build-isolation \
    --no-binary=:all: mamba-ssm==2.2.4 -d "$tmp"
tar xzf "$tmp"/mamba_ssm-2.2.4.tar.gz -C "$tmp"
cp -r "$tmp"/mamba_ssm-2.2.4/mamba_ssm .gpu/src/
# The FLAME authors' code, their Beauty data and frozen weights, for their epoch time.
if [ $# -ge 1 ]; then
    mkdir -p .gpu/authors/datasets .gpu/authors/frozen_weights
    cp -r "$1"/train.py "$1"/utils.py "$1"/samplers.py "$1"/metrics.py "$1"/models .gpu/authors/
    cp "$1"/datasets/amazon-beauty.txt .gpu/authors/datasets/
    cp "$1"/frozen_weights/amazon-beauty.pt .gpu/authors/frozen_weights/
fi
du -sh .gpu
