# The two commands of README.md: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 8000
PY := $(VENV)/bin/python
# onnxruntime-gpu only where an NVIDIA GPU answers; the CPU build everywhere else (they cannot share a venv).
ORT_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: serve test test-without-avx512 screenshot lint install-serve install-test install-browser install-docker docker-smoke docker-faults clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Serving needs no torch.
$(VENV)/.serve-$(ORT_EXTRA): pyproject.toml setup.py $(wildcard service/*/csrc/*.c service/*/csrc/*.h) | $(PY)
	$(PY) -m pip install --quiet -e ".[$(ORT_EXTRA),client]"
	touch $@

$(VENV)/.test-$(ORT_EXTRA): pyproject.toml setup.py $(wildcard service/*/csrc/*.c service/*/csrc/*.h) | $(PY)
	$(PY) -m pip install --quiet -e ".[$(ORT_EXTRA),train,dev,bench]"
	touch $@

install-serve: $(VENV)/.serve-$(ORT_EXTRA)
install-test: $(VENV)/.test-$(ORT_EXTRA)

# The browser test (tests/test_web_page.py) drives Debian's chromium: installed where we are root with apt, else it skips.
install-browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "could not install chromium; the browser tests will skip"; \
	else echo "no /usr/bin/chromium and no root apt-get; the browser tests will skip"; fi

serve: install-serve
	UPSCALER_HOST=$(HOST) UPSCALER_PORT=$(PORT) $(PY) -m service

test: install-test install-browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q

# The kernel tests on an emulated CPU with AVX2 and without AVX-512 (qemu in user mode; its "max" CPU has every feature
# qemu emulates, AVX2 and FMA but no AVX-512): checks that such a CPU runs the AVX2 code. Slow (minutes: every
# instruction is emulated), so not part of `make test`.
test-without-avx512: install-test
	@command -v qemu-x86_64 >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null)
	qemu-x86_64 -cpu max $(PY) -m pytest -q -p no:cacheprovider tests/runtime/test_fsrcnn_kernels.py tests/test_compiled.py

# Build both images (CPU and GPU flavours), run each, wait for /readyz and the HEALTHCHECK, upscale one image, check
# where /v1/models says the models run, stop it with SIGTERM (deploy/docker-smoke.sh); sizes and start times to
# SMOKE_RESULTS (empty: none). Needs a Docker engine, or root with docker.io + debootstrap; prints SKIP otherwise.
# Not part of `make test`: it takes minutes.
SMOKE_RESULTS ?= bench/results/docker-images.json
docker-smoke: install-docker | $(PY)
	PYTHON=$(PY) SMOKE_RESULTS=$(SMOKE_RESULTS) bash deploy/docker-smoke.sh

# Two CPU replicas behind a load balancer under docker compose, a batch pushed through while one replica is SIGKILLed
# and the other drained (deploy/docker-faults.sh, tests/deploy/test_replicas_under_faults.py); figures to
# FAULTS_RESULTS (empty: the test's temporary folder). Same needs as docker-smoke; prints SKIP without an engine.
FAULTS_RESULTS ?= bench/results/replicas-under-faults.json
docker-faults: install-docker install-test
	PYTHON=$(PY) UPSCALER_FAULTS_RESULTS=$(FAULTS_RESULTS) bash deploy/docker-faults.sh

# Debian's docker.io and debootstrap, where we are root with apt; otherwise the smoke test prints SKIP.
install-docker:
	@if command -v docker >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null) \
	    || echo "could not install docker.io/debootstrap; the container smoke test will skip"; \
	else echo "no docker and no root apt-get; the container smoke test will skip"; fi

# docs/web-page.png, the web page with a result (docs/screenshot.py): a picture for people, not a test.
screenshot: install-test install-browser
	PYTHONPATH=. $(PY) docs/screenshot.py

lint: install-test
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
