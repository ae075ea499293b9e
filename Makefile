# Every target installs what it needs into .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run run-multi test test-slow bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) scripts/train.py --config experiments/fedavg_synthetic.py --workdir runs/fedavg_synthetic

# make run's job as one run of two processes with 4 CPU devices each, joined
# at a localhost coordinator (README: "Many hosts").
MULTI_PORT ?= 12355
MULTI := $(PY) scripts/train.py --config experiments/fedavg_synthetic.py \
	--workdir runs/fedavg_synthetic_2x4 --num_processes=2 \
	--coordinator_address=localhost:$(MULTI_PORT)
run-multi: $(STAMP)
	export JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=4; \
	$(MULTI) --process_id=1 & other=$$!; \
	$(MULTI) --process_id=0; first=$$?; wait $$other; exit $$((first || $$?))

# One pytest worker per core; full-size end-to-end runs are `make test-slow`.
test: $(STAMP)
	$(PY) -m pytest tests -n auto --dist worksteal -m 'not slow'

test-slow: $(STAMP)
	$(PY) -m pytest tests -n auto --dist worksteal -m slow

bench: $(STAMP)
	$(PY) scripts/bench.py
	$(PY) scripts/bench_peers.py --out docs/bench_peers.md
	$(PY) scripts/bench_scale.py --out docs/bench_scale.md --plot docs/bench_scale.png
	$(PY) scripts/bench_aggregators.py --out docs/bench_aggregators.md
	$(PY) scripts/bench_aggregators.py --sharded --out docs/bench_aggregators_sharded.md
	$(PY) scripts/bench_client_state.py --clients 10000 --out docs/bench_client_state.md

clean:
	rm -rf $(VENV) runs .jax_cache
