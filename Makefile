# `make demo` and `make test` are the two commands of README.md; both create .venv with Python 3.12.
.PHONY: demo test package bench clean
demo:
	bash scripts/dev.sh demo
test:
	bash scripts/dev.sh test
package:
	bash scripts/dev.sh test -q -k package && .venv/bin/python scripts/package.py
bench:
	.venv/bin/python benchmarks/pipeline_bench.py
clean:
	rm -rf .venv dist .pytest_cache .ruff_cache .hypothesis
