# Every target works on a fresh clone: .venv is created and filled from the package registries.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

$(STAMP): pyproject.toml constraints.txt examples/beta_vae/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[test]' -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/zoo data fetch mnist
	$(VENV)/bin/zoo data fetch photos
	$(PY) -m pytest

DEMO_OUT := demo-output
SERVE_DIR := $(CURDIR)/$(DEMO_OUT)/serve
ZOO_SERVING := ZOO_SERVE_DIR=$(SERVE_DIR) $(VENV)/bin/zoo

# Load conv-vae-mnist, draw samples/reconstructions/interpolations, then serve it with
# TorchServe, send real requests, show the replies and stop the server.
demo: $(STAMP)
	$(PY) -m zoo.demo --out $(DEMO_OUT)
	$(ZOO_SERVING) serve conv-vae-mnist
	$(ZOO_SERVING) predict conv-vae-mnist '{"task": "sample", "n": 1, "seed": 0}' --out $(DEMO_OUT)/served-sample.png --show \
	  && $(ZOO_SERVING) predict conv-vae-mnist $(DEMO_OUT)/served-sample.png --out $(DEMO_OUT)/served-reconstruction.png --show; \
	  status=$$?; $(ZOO_SERVING) serve --stop; exit $$status

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_OUT)
