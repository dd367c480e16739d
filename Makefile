# Two commands on a fresh Debian/Ubuntu machine:
#   make run    install what is needed, then build a DwarFS layer of a real tree,
#               inspect it, mount it and compare it with the source
#   make test   install what is needed, then run the test suite
VENV ?= .venv
SRC  ?= /usr/share/doc
WORK ?= /tmp/fim-demo

.PHONY: deps run test bench lint typecheck
deps:
	@VENV=$(VENV) scripts/install-deps.sh

run: deps
	@FIM=$(VENV)/bin/fim scripts/demo.sh "$(SRC)" "$(WORK)"

test: deps
	$(VENV)/bin/pytest -q

bench: deps
	$(VENV)/bin/pytest bench -q -p no:cacheprovider

lint: deps
	$(VENV)/bin/ruff check .

typecheck: deps
	$(VENV)/bin/mypy
