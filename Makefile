# The two commands of the README: `make reproduce` and `make test`. Both create .venv when absent.
PY      := .venv/bin/python
STAMP   := .venv/.installed

.PHONY: reproduce reproduce-real test venv lab clean-reports

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m netanatomy.reproduce --set default --out reports

# every real-data set at its documented size (see README, "make reproduce-real"); resumes where it stopped
reproduce-real: $(STAMP)
	$(PY) -m netanatomy.reproduce --set real --out reports/real

test: $(STAMP)
	$(PY) -m pytest -q

lab: $(STAMP)
	.venv/bin/jupyter lab notebooks/

clean-reports:
	rm -rf reports
