# The two commands of the README. Each installs what it needs (.venv from requirements.lock).
OUT ?= runs/latest
FRACTIONS ?= 0.1
SEEDS ?= 0

.PHONY: run test lock

run:
	./scripts/bootstrap.sh
	.venv/bin/efm run --domain pointmass --fractions $(FRACTIONS) --seeds $(SEEDS) --out $(OUT)

test:
	./scripts/bootstrap.sh
	./scripts/browser.sh
	.venv/bin/ruff check .
	.venv/bin/pytest -q -n 2 --dist loadfile tests

# Re-resolve the locked dependency set after editing pyproject.toml.
lock:
	python3 -m uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o requirements.lock
