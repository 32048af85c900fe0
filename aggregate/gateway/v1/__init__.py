"""Generated from protos/aggregate/gateway/v1 by scripts/gen-protos."""
