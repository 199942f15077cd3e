"""Tiny random models, tokenizer, processors and inputs for tests, demos and benchmarks (never imported by the
library itself)."""
