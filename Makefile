# Two commands on a fresh Debian/Ubuntu machine:
#   make run    install what is needed, then build an image, run programs in it,
#               install one as root inside, commit it as a layer and run it again
#               (a Debian image with apt-get when root, else the blueprint form)
#   make test   install what is needed, then run the test suite
VENV ?= .venv
WORK ?= /tmp/fim-demo
DEMO ?= auto

.PHONY: deps run test bench lint typecheck
deps:
	@VENV=$(VENV) scripts/install-deps.sh

run: deps
	@FIM=$(abspath $(VENV))/bin/fim DEMO=$(DEMO) scripts/demo.sh "$(WORK)"

test: deps
	$(VENV)/bin/pytest -q

bench: deps
	$(VENV)/bin/pytest bench -q -p no:cacheprovider

lint: deps
	$(VENV)/bin/ruff check .

typecheck: deps
	$(VENV)/bin/mypy
