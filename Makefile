# Twinloop: `make demo` (set up + materialize every asset) and `make test` (set up + test suite) on a fresh machine.
# A working Python 3.12 is found on PATH or under pyenv (each candidate is run, so pyenv shims that refuse are skipped); override with `make PYTHON=/path/to/python3.12 ...`.
SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.12 $$(ls -d $$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V -r) /usr/local/bin/python3.12 /usr/bin/python3.12; do $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE ?= 1
# Debian packages: headless rendering (Mesa EGL/OSMesa), open3d's libusb, FFmpeg libraries for torchcodec, Chromium (browser tests).
DEB_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 libusb-1.0-0 ffmpeg chromium

.PHONY: setup system-deps demo test ui validate clean
setup: $(VENV)/.synced system-deps $(DAGSTER_HOME)/dagster.yaml

$(VENV)/bin/python:
	@test -n "$(PYTHON)" || { echo "error: no Python 3.12 found (PATH or pyenv); run: make PYTHON=/path/to/python3.12"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || { echo "error: $(PYTHON) is not Python 3.12"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q "uv==$(UV_VERSION)"

# Re-sync whenever the lockfile changes; --locked refuses a lockfile that no longer matches pyproject.toml.
$(VENV)/.synced: $(VENV)/bin/python uv.lock pyproject.toml
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --locked --extra test --python $(VENV)/bin/python
	@touch $@

system-deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(DAGSTER_HOME)/dagster.yaml: resources/dagster.yaml
	@mkdir -p $(DAGSTER_HOME) && cp $< $@

demo: setup
	$(VENV)/bin/dagster asset materialize -m assets.definitions --select '*'

test: setup
	$(VENV)/bin/python -m pytest

validate: setup  # both deployment profiles (local and the Kubernetes one, resources/k8s.py)
	$(VENV)/bin/dagster definitions validate -w workspace.yaml
	TWINLOOP_DEPLOYMENT=k8s $(VENV)/bin/dagster definitions validate -w workspace.yaml

ui: setup
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p $${PORT:-3000}

clean:
	rm -rf $(VENV) $(DAGSTER_HOME)
