"""The `ars` command line: composition root that starts agents, tools and benchmarks."""
