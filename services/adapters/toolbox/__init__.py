"""The toolbox adapter: docs/contracts.md §8's agents (echo, upper, concat, fail, sleep, blob) over
gRPC."""
