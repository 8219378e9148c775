# The two commands of the README. Both set up a fresh machine first (tools/setup.sh, idempotent).
.PHONY: demo test setup

demo:  ## calibrate the embedded model, export it, run it under two latency budgets
	bash tools/setup.sh
	HF_HUB_OFFLINE=1 python3 tools/demo.py

test:  ## lint + every test suite (what CI runs)
	bash tools/test.sh

setup:
	bash tools/setup.sh
