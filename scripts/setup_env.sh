#!/usr/bin/env bash
# Create .venv beside this checkout and install monai-unet with the extras the tests and bundles need.
# torch and torchvision are pinned first (2.14.1 / 0.29.1) so that pip never resolves a multi-GB download on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${MONAI_UNET_EXTRAS:-dev,large,dask,dicom,label,bioimageio,int8}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
# >>> Orthanc: the DICOMweb server the DICOMweb tests start (tests/dicomweb_server.py); Debian/Ubuntu packages >>>
ORTHANC_PLUGIN=/usr/share/orthanc/plugins/libOrthancDicomWeb.so
if ! { command -v Orthanc >/dev/null 2>&1 || [ -x /usr/sbin/Orthanc ]; } || [ ! -e "$ORTHANC_PLUGIN" ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && sudo -n true 2>/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    # installed for the tests only: the system service the package sets up is not left running
    $SUDO apt-get update -q && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q orthanc orthanc-dicomweb \
      && { $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true; } \
      || echo "setup_env.sh: installing orthanc orthanc-dicomweb failed; the DICOMweb tests will say so" >&2
  else
    echo "setup_env.sh: for the DICOMweb tests, install Orthanc: sudo apt-get install -y orthanc orthanc-dicomweb" >&2
  fi
fi
# <<< Orthanc <<<
.venv/bin/python -c "import torch, monai, monai_unet; print(f'monai-unet {monai_unet.__version__}: torch {torch.__version__}, monai {monai.__version__}')"
