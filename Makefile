# The two commands of the README: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2
export MLFLOW_DISABLE_TELEMETRY ?= true
# Test processes of `make test` (pytest-xdist): a tiny training spends most of its time in
# single-threaded graph tracing, so two processes keep both cores of a 2-core CI machine busy.
TEST_WORKERS ?= 2

# CPU-sized demo settings (the MLproject defaults are the article's GPU settings).
DEMO_CATEGORY ?= carpet
DEMO_IMAGE_SIZE ?= 96
DEMO_EPOCHS ?= 10
DEMO_BATCH_SIZE ?= 32
# ImageNet weights cannot be downloaded offline: use them when Keras's cache has them.
IMAGENET_WEIGHTS_FILE := $(HOME)/.keras/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_$(DEMO_IMAGE_SIZE)_no_top.h5
DEMO_WEIGHTS ?= $(if $(wildcard $(IMAGENET_WEIGHTS_FILE)),imagenet,none)
# The patch method without any download: ImageNet EfficientNet-Lite0 from the pretrained extra
# installed with the package, measured best on the real magnetic tiles (README, first table);
# DEMO_PATCH_BACKBONE=pixels uses raw-pixel windows (no network), =none random MobileNetV2 features.
DEMO_PATCH_BACKBONE ?= imagenet
DEMO_PATCH_ARCH ?= efficientnet_lite0
DEMO_PATCH_IMAGE_SIZE ?= 224
DEMO_SELF_EPOCHS ?= 5

.PHONY: demo test test-fast install install-test benchmarks mlproject clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[pretrained]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

demo: install
	@echo "== generating (or reusing) the built-in synthetic dataset"
	$(BIN)/python -c "from defectlab.data.synthetic import ensure_synthetic_dataset; print(ensure_synthetic_dataset())"
	@echo "== the patch method on $(DEMO_CATEGORY), offline (backbone=$(DEMO_PATCH_BACKBONE), $(DEMO_PATCH_ARCH), $(DEMO_PATCH_IMAGE_SIZE) px): scores and anomaly maps"
	$(BIN)/mlflow run . -e patch --env-manager local \
		-P category=$(DEMO_CATEGORY) -P image_size=$(DEMO_PATCH_IMAGE_SIZE) -P backbone=$(DEMO_PATCH_BACKBONE) \
		-P backbone_arch=$(DEMO_PATCH_ARCH) -P self_epochs=$(DEMO_SELF_EPOCHS)
	@echo "== the article's L2-softmax metric learning on $(DEMO_CATEGORY) (weights=$(DEMO_WEIGHTS), CPU-sized)"
	$(BIN)/mlflow run . -e metric --env-manager local \
		-P category=$(DEMO_CATEGORY) -P image_size=$(DEMO_IMAGE_SIZE) -P epochs=$(DEMO_EPOCHS) \
		-P batch_size=$(DEMO_BATCH_SIZE) -P weights=$(DEMO_WEIGHTS)
	@echo "== done: each run printed its test_image_auroc above; browse them with  $(VENV)/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: install-test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

# The seconds-long tier for your own loop: no training, no servers.
test-fast: install-test
	$(BIN)/python -m pytest -q -m "not integration and not training" $(PYTEST_ARGS)

# MLproject is generated from the CLI (tests/test_mlproject.py checks it is current).
mlproject: install
	$(BIN)/python -m defectlab.mlproject_file > MLproject

benchmarks: install-test
	for script in benchmarks/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) mlflow.db mlruns mlartifacts optuna.db
