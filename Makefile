# VisionOps developer entry points. `make demo` and `make test` are all a fresh clone needs.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
STAMP := $(VENV)/.installed
EXTRAS := pipeline,serve,openvino,dev
PYTEST_ARGS ?=
IMAGES ?=
MUTATION_TARGETS ?=
# Label Studio (`visionops label studio`) lives in a virtualenv of its own: its pins clash with ours.
LS_VENV := .label-studio
LS_CONSTRAINTS := requirements/label-studio.txt
LS_STAMP := $(LS_VENV)/.installed
# Its settings for an offline machine: no Sentry, no PyPI version check, no analytics; HOST unset
# (Label Studio expects a URL there). visionops/labeling/studio.py starts it with the same.
LS_OFFLINE_ENV := env -u HOST -u LABEL_STUDIO_HOST LABEL_STUDIO_SENTRY_DSN= \
  LABEL_STUDIO_FRONTEND_SENTRY_DSN= LABEL_STUDIO_LATEST_VERSION_CHECK=false \
  LABEL_STUDIO_COLLECT_ANALYTICS=false LABEL_STUDIO_FEATURE_FLAGS_OFFLINE=true

.PHONY: help install label-studio label-studio-lock tools images demo offline-check offline-check-images test test-containers lint format lock clean mutation

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@echo ">> creating $(VENV) and installing visionops[$(EXTRAS)] (pinned by $(CONSTRAINTS))"
	@test -x $(BIN)/python || { command -v $(PYTHON) >/dev/null || PYTHON=python3; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	@# torch first: this pair installs from the machine's wheel cache, not as a multi-GB download
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) torch torchvision
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip check
	@touch $@

install: $(STAMP) ## Create .venv and install the project with every extra

$(LS_STAMP): $(LS_CONSTRAINTS)
	@echo ">> installing label-studio into $(LS_VENV)/, its own virtualenv (pinned by $(LS_CONSTRAINTS))"
	rm -rf $(LS_VENV)
	@command -v $(PYTHON) >/dev/null && py=$(PYTHON) || py=python3; $$py -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q pip==26.3  # the bundled pip 23.2 is much slower at this
	$(LS_VENV)/bin/python -m pip install -q -c $(LS_CONSTRAINTS) label-studio
	$(LS_VENV)/bin/python -m pip check
	@# A migrated empty database: a new data dir starts from a copy of it (seconds, not minutes).
	$(LS_OFFLINE_ENV) LABEL_STUDIO_BASE_DATA_DIR=$(CURDIR)/$(LS_VENV)/template \
	  $(LS_VENV)/bin/label-studio version >$(LS_VENV)/template.log 2>&1 || { tail -20 $(LS_VENV)/template.log; exit 1; }
	rm -f $(LS_VENV)/template/.env
	@touch $@

label-studio: $(LS_STAMP) ## Install Label Studio into .label-studio/ (its own venv) for `visionops label studio`

label-studio-lock: ## Re-pin requirements/label-studio.txt from .label-studio/
	@{ grep '^#' $(LS_CONSTRAINTS); $(LS_VENV)/bin/python -m pip freeze --all | grep -v '^pip=='; } > $(LS_CONSTRAINTS).new
	mv $(LS_CONSTRAINTS).new $(LS_CONSTRAINTS)

tools: ## System tools the tests use (shellcheck, promtool, prometheus, pushgateway, strace, chromium for the HTML reports), via apt if missing
	@missing=""; for t in shellcheck promtool prometheus prometheus-pushgateway strace chromium; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing shellcheck, prometheus (promtool), prometheus-pushgateway, strace and chromium with apt"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends shellcheck prometheus prometheus-pushgateway strace chromium >/dev/null; \
	fi

images: ## Build the pipeline, predictor and MLflow images (hack/images.sh; IMAGES="predictor mlflow" for some)
	hack/images.sh $(IMAGES)

demo: $(STAMP) $(LS_STAMP) ## Generate data, train, serve, monitor, label in Label Studio, retrain, on one machine
	$(BIN)/visionops demo
	@echo ">> offline by construction; to see it checked below Python (as root): make offline-check"

offline-check: $(STAMP) $(LS_STAMP) tools ## As root: the quick demo (Label Studio too), both engines, no network route; lists any DNS query or connection out
	$(BIN)/visionops doctor offline

offline-check-images: $(STAMP) tools ## As root: the predictor and pipeline images with no network route (tests/test_offline_containers.py)
	VISIONOPS_REQUIRE_DOCKER=1 $(BIN)/python -m pytest tests/test_offline_containers.py -rA $(PYTEST_ARGS)

lint: $(STAMP) tools ## ruff check + format check, import contracts, module sizes, shellcheck, hadolint, actionlint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m tests.module_size visionops 500
	@shopt -s nullglob; scripts=(hack/*.sh .ci/run); if ((${#scripts[@]})); then shellcheck "$${scripts[@]}"; fi
	@shopt -s nullglob; files=(images/*Dockerfile*); if ((${#files[@]})); then $(BIN)/hadolint "$${files[@]}"; fi
	$(BIN)/actionlint -shellcheck=shellcheck .github/workflows/*.yml

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint $(LS_STAMP) ## Lint, then the whole test suite (unit, integration with real servers, end to end)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-containers: $(STAMP) ## All three images, then every container test, the pipeline image's included
	hack/images.sh
	VISIONOPS_REQUIRE_DOCKER=1 VISIONOPS_BUILD_PIPELINE_IMAGE=1 $(BIN)/python -m pytest \
	  tests/test_containers.py tests/test_pipeline_docker.py tests/test_offline_containers.py \
	  tests/test_serving_server.py tests/test_serving_sources.py -k 'not process' $(PYTEST_ARGS)

mutation: $(STAMP) ## Mutation score of the modules that decide (mutmut; slow, not part of `make test`)
	$(BIN)/python -m tests.mutation $(MUTATION_TARGETS)

lock: ## Re-pin requirements/constraints.txt from the current .venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^visionops' > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean: ## Remove local outputs (keeps .venv)
	rm -rf .visionops local_outputs .pytest_cache .ruff_cache
