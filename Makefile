# shoesearch: `make demo` and `make test` do everything on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# faiss-cpu by default; on a GPU host: make install EXTRAS=gpu,test
EXTRAS ?= cpu,test
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install browser test test-fast demo bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip check
	@touch $(STAMP)

install: $(STAMP)

# The browser tests drive Debian's Chromium through Playwright: installed here when missing and this user can
# (root with apt-get), with a CJK font for the shop's Chinese titles; otherwise tests/test_browser.py is skipped
# and says why. Never fails the build.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; } \
	  || echo "browser: Chromium not installed (needs root and apt-get): the browser tests will be skipped"; }

test: $(STAMP) browser
	$(PY) -m pytest -q

# The fast loop: every test but the end-to-end ones (flows, crawls, training, CLI processes).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e"

demo: $(STAMP)
	$(VENV)/bin/shoesearch demo

bench: $(STAMP)
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf data bench/results .pytest_cache
