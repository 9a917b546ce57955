"""Baselines for jdcl-bench, registered through the jdcl_bench.methods entry-point group like any plugin."""
