"""dagwire: run workflows of agent tasks as a DAG across gRPC microservices."""

__version__ = "0.1.0"
