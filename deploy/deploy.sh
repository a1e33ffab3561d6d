#!/usr/bin/env bash
# Build the facerest image and run it: on CPU, or on N GPUs with W workers per GPU, one port.
# The knobs of InsightFace-REST's deploy script, as options or environment variables:
#
#   deploy/deploy.sh [--gpus N] [--workers W] [--fp16] [--port P] [--det NAME] [--rec NAME]
#                    [--ga NAME] [--mask NAME] [--max-size WxH] [--det-batch N] [--rec-batch N]
#                    [--runtime trt|onnx] [--name NAME] [--base-image IMAGE] [--dry-run]
#
#   n_gpu / --gpus          GPUs to use, 0 = the CPU image                  (default 0)
#   n_workers / --workers   worker processes per GPU (or on CPU)           (default 1)
#   force_fp16 / --fp16     build TensorRT engines in FP16                  (default off)
#   START_PORT / --port     the one port every GPU answers on              (default 18081)
#   det_model, rec_model, ga_model, mask_detector / --det --rec --ga --mask
#   max_size, det_batch_size, rec_batch_size / --max-size --det-batch --rec-batch
#
# Several GPUs share one port: `facerest serve` starts one process group per GPU inside the
# container (CUDA_VISIBLE_DEVICES per group) on one listening socket. For one container per GPU
# behind nginx, use deploy/compose.multi-gpu.yml instead.
set -euo pipefail

n_gpu=${n_gpu:-0}
n_workers=${n_workers:-1}
force_fp16=${force_fp16:-false}
port=${START_PORT:-18081}
det_model=${det_model:-scrfd_500m_bnkps}
rec_model=${rec_model:-w600k_mbf}
ga_model=${ga_model:-}
mask_detector=${mask_detector:-}
max_size=${max_size:-640,640}
det_batch_size=${det_batch_size:-1}
rec_batch_size=${rec_batch_size:-64}
runtime=${runtime:-trt}
name=${name:-facerest}
base_image=${BASE_IMAGE:-}
dry_run=false

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpus) n_gpu=$2; shift 2 ;;
        --workers) n_workers=$2; shift 2 ;;
        --fp16) force_fp16=true; shift ;;
        --port) port=$2; shift 2 ;;
        --det) det_model=$2; shift 2 ;;
        --rec) rec_model=$2; shift 2 ;;
        --ga) ga_model=$2; shift 2 ;;
        --mask) mask_detector=$2; shift 2 ;;
        --max-size) max_size=$2; shift 2 ;;
        --det-batch) det_batch_size=$2; shift 2 ;;
        --rec-batch) rec_batch_size=$2; shift 2 ;;
        --runtime) runtime=$2; shift 2 ;;
        --name) name=$2; shift 2 ;;
        --base-image) base_image=$2; shift 2 ;;
        --dry-run) dry_run=true; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "deploy.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

for number in "$n_gpu" "$n_workers" "$port" "$det_batch_size" "$rec_batch_size"; do
    [[ "$number" =~ ^[0-9]+$ ]] || { echo "deploy.sh: '$number' is not a number" >&2; exit 2; }
done
[[ "$n_workers" -ge 1 ]] || { echo "deploy.sh: --workers must be at least 1" >&2; exit 2; }

run() {
    if $dry_run; then printf '%q ' "$@"; echo; else "$@"; fi
}

root="$(cd "$(dirname "$0")/.." && pwd)"
build_args=()
[[ -n "$base_image" ]] && build_args=(--build-arg "BASE_IMAGE=$base_image")

env_args=(
    -e "FACEREST_WORKERS=$n_workers"
    -e "FACEREST_DET_NAME=$det_model"
    -e "FACEREST_REC_NAME=$rec_model"
    -e "FACEREST_GA_NAME=$ga_model"
    -e "FACEREST_MASK_NAME=$mask_detector"
    -e "FACEREST_MAX_SIZE=$max_size"
    -e "FACEREST_DET_BATCH_SIZE=$det_batch_size"
    -e "FACEREST_REC_BATCH_SIZE=$rec_batch_size"
)

if [[ "$n_gpu" -eq 0 ]]; then
    image=facerest:cpu
    run docker build -f "$root/deploy/Dockerfile.cpu" -t "$image" "${build_args[@]}" "$root"
    device_args=()
else
    image=facerest:gpu
    gpus=$(seq -s, 0 $((n_gpu - 1)))
    run docker build -f "$root/deploy/Dockerfile.gpu" -t "$image" "${build_args[@]}" "$root"
    device_args=(--gpus "\"device=$gpus\"")
    env_args+=(-e "FACEREST_GPUS=$gpus" -e "FACEREST_FORCE_FP16=$force_fp16" -e "FACEREST_RUNTIME=$runtime")
fi

run docker rm -f "$name" >/dev/null 2>&1 || true
run docker run -d --name "$name" --restart unless-stopped \
    -p "$port:18081" -v "$name-models:/models" \
    "${device_args[@]}" "${env_args[@]}" "$image"
echo "facerest ($image, ${n_gpu} GPU(s) x ${n_workers} worker(s)) on http://localhost:$port"
