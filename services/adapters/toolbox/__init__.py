"""The toolbox adapter: DESIGN §8's agents (echo, upper, concat, fail, sleep, blob) over gRPC."""
