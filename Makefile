# banditops — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned to a release whose CPU wheel pip can find; the
# project's own range (torch>=2.5,<2.15) then installs nothing more.
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test compose-test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/banditops demo

# the suite runs in PYTEST_WORKERS processes (pytest-xdist; 0 runs it in this one); tests
# that must not overlap, or that share a costly set-up (the demo and `airflow standalone`
# on its workspace, the DAG tests' Airflow home), share an xdist_group and so one process
PYTEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

# the production stack for real (docker/compose_test.py; needs root for apt-get and dockerd):
# build the images, run docker/docker-compose.yml on loopback ports, use it end to end; then
# the same with a wrong database URL, which must fail with that service's log
compose-test: $(STAMP)
	$(BIN)/python docker/compose_test.py
	$(BIN)/python docker/compose_test.py --break

bench: $(STAMP)
	-$(BIN)/python -m pip install --quiet -e ".[bench]" || echo "bench peers (vowpalwabbit, mabwiser) not installable here; benchmarks run without them"
	mkdir -p bench-results
	$(BIN)/python -m benchmarks.latency --json bench-results/latency.json
	$(BIN)/python -m benchmarks.quadrature --json bench-results/quadrature.json
	$(BIN)/python -m benchmarks.work_units --json bench-results/work_units.json
	$(BIN)/python -m benchmarks.magnitude --json bench-results/magnitude.json
	$(BIN)/python -m benchmarks.ope_speed --rows 1000000 --json bench-results/ope_speed.json
	$(BIN)/python -m benchmarks.gate_level --windows 200 --rows 2000 --json bench-results/gate_level.json
	$(BIN)/python -m benchmarks.interval_coverage --json bench-results/interval_coverage.json
	$(BIN)/python -m benchmarks.serving_load --rps 200 --seconds 30 --store both --systems banditops --json bench-results/serving_load.json
	$(BIN)/python -m benchmarks.serving_load --rps 200,500,1000 --seconds 20 --json bench-results/serving_floor.json
	$(BIN)/python -m benchmarks.rebuild --rows 1000000 --dim 64 --json bench-results/rebuild.json
	$(BIN)/python -m benchmarks.recovery --rewards 20000 --candidates 200 --json bench-results/recovery.json
	$(BIN)/python -m benchmarks.new_arms --arms 16000 --json bench-results/new_arms.json
	$(BIN)/python -m benchmarks.decision_copy --arms 1000,4000,16000 --json bench-results/decision_copy.json
	$(BIN)/python -m benchmarks.snapshot_copy --arms 4000,16000 --json bench-results/snapshot_copy.json
	$(BIN)/python -m benchmarks.snapshot_write --arms 4000,16000 --store both --json bench-results/snapshot_write.json
	$(BIN)/python -m benchmarks.catalog --items 100000 --k 100 --rps 100 --seconds 20 --json bench-results/catalog.json
	$(BIN)/python -m benchmarks.artwork --steps 4000 --seeds 0,1,2 --json bench-results/artwork.json
	$(BIN)/python -m benchmarks.obd --data-dir ../shared/data/obd --campaign men --n-boot 30 --n-sim 1000000 --json bench-results/obd_men.json
	$(BIN)/python -m benchmarks.reliability --json bench-results/reliability.json
	$(BIN)/python -m benchmarks.scale --rows 5000000 --json bench-results/scale.json

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# every package: the list and the strict configuration are [tool.mypy] in pyproject.toml
	$(BIN)/mypy
	# dependency audit: needs PyPI's or OSV's vulnerability API (an offline mirror skips every package)
	$(BIN)/pip-audit --skip-editable --progress-spinner off

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
