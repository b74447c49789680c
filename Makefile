# `make demo` trains a real network on the embedded CIFAR-10 subset; `make test` runs the test suite.
# The first use creates .venv and installs the package into it (pinned torch, see constraints.txt).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow campaign-reports clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the distribution's name before 0.2.0 was resnet (now resnet-reference): its install and build metadata go
	$(BIN)/pip uninstall -qq -y resnet
	rm -rf src/resnet.egg-info
	$(BIN)/pip install -q -c constraints.txt -e '.[test,export]'
	touch $(STAMP)

# ResNet-20, the paper's recipe scaled to 15 epochs of the embedded 5,000 training images; validation on its 1,000.
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/resnet train --model resnet20 --data embedded --epochs 15 --out runs/demo
	$(BIN)/resnet eval --weights runs/demo --data embedded --split val
	@echo "curves: runs/demo/curves.png  metrics: runs/demo/metrics.jsonl"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The campaign's reports (Table 6, Fig. 6, Fig. 7, the lesion study at fast-32k), rebuilt from the checked-in records
# alone after a finished run's record lands in results/records: nothing is trained, seconds in all.
CAMPAIGN_REPORTS := cifar-depth cifar-degradation layer-responses lesion
campaign-reports: $(STAMP)
	for name in $(CAMPAIGN_REPORTS); do \
	    $(BIN)/resnet reproduce $$name --budget fast-32k --records results/records --out results/$$name-fast-32k \
	        || exit 1; \
	done

clean:
	rm -rf $(VENV) runs build dist *.egg-info src/*.egg-info
