# The two set-up commands of the README: `make demo` and `make test`. Each installs what it
# needs first (Debian's Fashion-MNIST package where apt-get exists, then the Python package).
PYTHON ?= python3
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: install data demo test

data:
	@if [ ! -d $(FASHION) ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) \
		|| echo "apt-get could not install dataset-fashion-mnist; convlens will download Fashion-MNIST with torchvision"; \
	fi

install: data
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	convlens demo

test: install
	ruff check .
	ruff format --check .
	$(PYTHON) -m pytest -q
