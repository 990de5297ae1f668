# make demo: set up .venv and run the main job on the embedded default.
# make test: set up .venv and run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.flatplug-installed
ADAPTERS := $(wildcard adapters/*/pyproject.toml)
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade "pip>=23" wheel

$(STAMP): $(BIN)/python pyproject.toml constraints.txt $(ADAPTERS)
	$(BIN)/pip install -q -e ".[dev]"
	@for a in $(dir $(ADAPTERS)); do echo "installing $$a"; $(BIN)/pip install -q -e "$$a[test]" || exit 1; done
	@$(BIN)/pip check || echo "warning: pip check reports conflicting requirements (listed above); constraints.txt pins around the known ones"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/flatplug score

bench: $(STAMP)
	$(BIN)/python benchmarks/relative_flatness_closed_form.py
	$(BIN)/python benchmarks/hessian_vs_pyhessian.py
	$(BIN)/python benchmarks/hvp_cost.py
	$(BIN)/python benchmarks/batchnorm_graph.py
	$(BIN)/python benchmarks/training_steps.py
	$(BIN)/python benchmarks/ray_executor.py
	$(BIN)/python benchmarks/gpu_scoring.py --n 4 --hvp-batch 4 --repeats 3 --lanczos-iters 5 --probes 2

# make leaderboard: score every model of ../shared/models and write docs/leaderboard.md and docs/leaderboard/
# (resumable: rerunning skips what leaderboard.db holds; LEADERBOARD_ARGS="--executor ray" for a cluster)
.PHONY: leaderboard
leaderboard: $(STAMP)
	$(BIN)/flatplug leaderboard $(LEADERBOARD_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
