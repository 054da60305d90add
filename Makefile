# mmft: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need into .venv first (a second run is quick).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheels that this project is tested with; override for a CUDA machine, e.g.
#   make install TORCH_SPEC="torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,label,deepspeed,qlora
STAMP := $(VENV)/.mmft-installed
PYTEST_ARGS ?=

.PHONY: install java demo test test-fast lint bench clean browser

install: java $(STAMP)

java:
	@if command -v java >/dev/null 2>&1; then \
		java -version 2>&1 | head -n 1; \
	else \
		echo "ERROR: Java not found. pycocoevalcap's PTB tokenizer, METEOR and SPICE need a Java runtime (>= 8)."; \
		echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; \
		echo "  Fedora/RHEL:   sudo dnf install -y java-17-openjdk-headless"; \
		echo "  macOS:         brew install openjdk@17"; \
		echo "  conda:         conda install -c conda-forge openjdk=17"; \
		exit 1; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python scripts/prebuild_deepspeed_ops.py
	touch $@

browser:
	bash scripts/install_chromium.sh

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch --num_processes 1 --cpu recipes/caption_ppo.py

test: install browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

test-fast: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not distributed and not browser" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check mmft reward_models recipes scripts tests

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_rewards.py --json outputs/bench_rewards.json
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_ppo.py --json outputs/bench_ppo.json
	HF_HUB_OFFLINE=1 $(BIN)/python scripts/bench_memory.py --json outputs/bench_memory.json

clean:
	rm -rf $(VENV) .cache outputs test-artifacts
