"""Harnesses for rehearsals, tests and benchmarks; production code never imports them."""
