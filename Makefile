# Two commands do everything: `make tutorial` runs the notebooks, `make test` runs the tests.
# Each sets itself up first: a virtual environment in .venv/ with the pinned packages, and the
# tiny GLM-4 in weights/tiny-glm4 when it is missing or its recipe changed.

PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
TESTING := $(VENV)/.installed-test
TINY := weights/tiny-glm4/config.json
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

.PHONY: setup tiny tutorial test test-fast sync student kit install-kit clean

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: the course needs Python 3.11 or newer; install it, or run: make PY=/path/to/python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e .
	@touch $@

tiny: $(TINY)

$(TINY): $(INSTALLED) helpers/tiny.py helpers/families.py helpers/glm4_chat_template.jinja data/corpus_zh.txt data/alpaca_zh_sample.json
	$(OFFLINE) $(PYTHON) -m helpers.tiny

tutorial: setup tiny
	$(PYTHON) -m helpers.tutorial

# pytest, pytest-xdist, selenium and uv: the test extra, installed for the tests only
$(TESTING): $(INSTALLED)
	$(PYTHON) -m pip install --quiet -e ".[test]"
	@touch $@

# Two worker processes (pytest-xdist), each test file whole in one of them; notebook 04's training runs once for both.
# Files go out in the order tests/conftest.py sets (--no-loadscope-reorder): notebook 04 first, the files that load
# its adapter last, so the other worker runs everything else meanwhile instead of waiting.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: setup tiny $(TESTING)
	$(OFFLINE) $(PYTHON) -m pytest $(XDIST)

# The quick lane for every edit: no training, notebook, server, kit or browser (under a minute on 2 cores).
test-fast: setup tiny $(TESTING)
	$(OFFLINE) $(PYTHON) -m pytest $(XDIST) -m "not slow"

# The notebooks are the source of the functions marked #@save: this writes them into helpers/ (one direction).
sync: setup
	$(PYTHON) -m helpers.sync

# Classroom (docs/workshop.md): student copies with the solutions left blank; an offline kit for a USB
# stick (WITH_9B=1 adds the 9B weights in weights/; PLATFORM=win_amd64, macosx_14_0_arm64 or
# manylinux_2_28_x86_64 makes it for students on that system, in kit-PLATFORM/); and a student machine installed
# from it, offline.
student: setup
	$(PYTHON) -m helpers.classroom student

kit: setup tiny
	$(if $(PLATFORM),@$(PYTHON) -c "import uv" 2>/dev/null || $(PYTHON) -m pip install --quiet -e ".[kit]")
	$(PYTHON) -m helpers.classroom kit $(if $(WITH_9B),--with-9b) $(if $(PLATFORM),--platform $(PLATFORM))

install-kit:
	@test -n "$(KIT)" || { echo "error: say where the kit is: make install-kit KIT=/path/to/kit"; exit 1; }
	$(PY) -m helpers.classroom install $(KIT)

clean:
	rm -rf runs outputs swanlog student .pytest_cache
