# The two set-up commands of the README: `make demo` and `make test`. Each installs what it
# needs first (Debian's Fashion-MNIST package where apt-get exists, then the Python package).
PYTHON ?= python3
FASHION := /usr/share/datasets/fashion-mnist

.PHONY: install data browser demo test

data:
	@if [ ! -d $(FASHION) ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) \
		|| echo "apt-get could not install dataset-fashion-mnist; convlens will download Fashion-MNIST with torchvision"; \
	fi

# The atlas browser test drives Debian's Chromium with Playwright (no browser download).
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		(apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) \
		|| echo "apt-get could not install chromium; the atlas browser test will be skipped"; \
	fi

install: data
	$(PYTHON) -m pip install -q -e '.[test]'

demo: install
	convlens demo

test: install browser
	ruff check .
	ruff format --check .
	$(PYTHON) -m pytest -q
