#!/usr/bin/env bash
# Create .venv beside this checkout and install monai-unet with the extras the tests and bundles need.
# torch and torchvision are pinned first (2.14.1 / 0.29.1) so that pip never resolves a multi-GB download on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${MONAI_UNET_EXTRAS:-dev,large,dicom,label}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
.venv/bin/python -c "import torch, monai, monai_unet; print(f'monai-unet {monai_unet.__version__}: torch {torch.__version__}, monai {monai.__version__}')"
