"""Generated from protos/aggregate/gateway by scripts/gen-protos."""
