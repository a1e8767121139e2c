# coupon-spark: `make help` lists the targets. Every target that runs code installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
CONF ?= conf/local.yaml
# the synthetic shop's calendar: its campaigns run around shop.start_date (2026-11-02)
RUN_DATE ?= 2026-11-12
DAYS ?= 3
DEMO_USERS ?= 100000
DEMO_LAKE ?= ./lakehouse

# Spark workers must use the venv's interpreter; TensorFlow 2.18 with tf-keras (Keras 2) for Horovod.
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

# horovod 0.28.1 from source, against the TensorFlow just installed; Gloo on CPU, NCCL where CUDA is found.
HOROVOD_BUILD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=GLOO MAKEFLAGS=-j2

.DEFAULT_GOAL := help
.PHONY: help setup setup-airflow setup-browser demo test check bench package clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	@command -v java >/dev/null || [ -n "$$JAVA_HOME" ] || { echo "Spark needs Java 17+: install a JDK (e.g. apt-get install openjdk-17-jre-headless) or set JAVA_HOME"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c $(CONSTRAINTS) --upgrade pip setuptools wheel
	$(BIN)/pip install -c $(CONSTRAINTS) -e ".[dev,train]"
	touch $@

$(VENV)/.horovod: $(VENV)/.installed
	$(HOROVOD_BUILD_ENV) $(BIN)/pip install --no-build-isolation -c $(CONSTRAINTS) horovod==0.28.1
	$(BIN)/python -c "import horovod.tensorflow as hvd; assert hvd.gloo_built(), 'horovod built without Gloo'"
	touch $@

# The Delta Spark connector (io.delta jars only: Spark ships Scala, Hadoop, Parquet, Jackson), fetched with Maven
# (-C: the repository's checksums must match) and checked against the pinned SHA256SUMS. Without Maven or the
# network it warns: the lake then uses the bridge backend, and the native backend's tests skip.
.jars/.fetched: jars/pom.xml jars/SHA256SUMS
	@rm -rf .jars.tmp; if ! command -v mvn >/dev/null; then \
		echo "setup: no mvn (Maven 3): the Delta connector's jars are not fetched; the lake uses the bridge backend"; \
	elif mvn -q -B -C -Dstyle.color=never -f jars/pom.xml dependency:copy-dependencies -DincludeGroupIds=io.delta \
			-DoutputDirectory=$(CURDIR)/.jars.tmp && (cd .jars.tmp && sha256sum --quiet -c ../jars/SHA256SUMS); then \
		rm -rf .jars && mv .jars.tmp .jars && touch $@; \
	else rm -rf .jars.tmp; echo "setup: the Delta connector's jars could not be fetched or did not match" \
		"jars/SHA256SUMS; the lake uses the bridge backend"; fi

setup: $(VENV)/.horovod .jars/.fetched ## create .venv, install the pinned stack (horovod built from source: ~5 min once), fetch the Delta connector

AIRFLOW_VENV := .venv-airflow
$(AIRFLOW_VENV)/.installed: requirements/airflow.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q -c $(CONSTRAINTS) --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -r requirements/airflow.txt
	touch $@

setup-airflow: $(AIRFLOW_VENV)/.installed ## a separate venv with Airflow, to load dags/ in the tests

setup-browser: ## Debian's chromium and chromedriver for the report's browser test (as root: apt-get; else it skips)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium chromium-driver >/dev/null \
			|| { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; } \
			|| echo "setup-browser: apt-get could not install chromium and chromium-driver; the browser test skips"; \
	else echo "setup-browser: install the Debian packages chromium and chromium-driver to run the report's" \
		"browser test (tests/test_pipeline.py skips it without them)"; fi

demo: setup ## run the whole loop on a local Spark with the synthetic shop (lakehouse in ./lakehouse)
	$(BIN)/coupon-spark doctor --conf $(CONF) --run-date $(RUN_DATE) --set lake.root=$(DEMO_LAKE)
	time $(BIN)/coupon-spark pipeline --conf $(CONF) --run-date $(RUN_DATE) --days $(DAYS) \
		--set lake.root=$(DEMO_LAKE) --set lake.landing=$(DEMO_LAKE)/landing --set shop.users=$(DEMO_USERS)

test: setup setup-airflow setup-browser ## run the test suite (real Spark, real Delta tables, the DAG loaded by Airflow)
	$(BIN)/python -m pytest

# modules held to mypy --strict (the ones the issue-15 sweep built or rewrote; add a module once it passes)
STRICT = coupon_spark/stages.py coupon_spark/tables.py coupon_spark/runner.py coupon_spark/storage.py \
	coupon_spark/errors.py coupon_spark/policy.py coupon_spark/evaluation/results.py \
	coupon_spark/evaluation/sections.py

check: setup ## lint and type-check (ruff, mypy; mypy --strict on the modules in STRICT)
	$(BIN)/ruff check coupon_spark jobs tests bench dags
	$(BIN)/ruff format --check coupon_spark jobs tests bench dags
	$(BIN)/mypy coupon_spark
	$(BIN)/mypy --strict --follow-imports=silent $(STRICT)

bench: setup ## benchmarks: figures printed as ratios against a baseline measured in the same run (~1 h)
	$(BIN)/python bench/lake_write.py --partitioned
	$(BIN)/python bench/score.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/allocation.py
	$(BIN)/python bench/cleanse.py
	$(BIN)/python bench/features.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/dimension.py

package: setup ## build the wheel (dist/) that spark-submit --py-files ships to the cluster
	rm -rf dist build
	$(BIN)/python -m build --wheel --no-isolation --outdir dist
	@echo "spark-submit --py-files dist/$$(cd dist && ls *.whl) jobs/<stage>.py --conf conf/cluster.yaml"

clean: ## remove build outputs and the local lakehouse (keeps .venv)
	rm -rf dist build *.egg-info lakehouse .pytest_cache .mypy_cache .ruff_cache
