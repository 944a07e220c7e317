# Convenience targets for machines that have make; the scripts are the real commands.
.PHONY: run test bench
run:
	./scripts/run.sh
test:
	./scripts/test.sh
bench:
	./scripts/bench.sh
