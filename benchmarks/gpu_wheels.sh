#!/usr/bin/env bash
# The wheels an accelerator image without ml-collections and dm-pix needs
# for jcc, downloaded here into .whl/ (ignored by git) for the device to
# install: pip install --no-index --no-deps --target DIR .whl/*.whl.
# Both are pure Python; their own dependencies (absl-py, PyYAML, chex, jax)
# are on such images already.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: -d .whl \
    'ml-collections>=1.0' 'dm-pix>=0.4.3'
