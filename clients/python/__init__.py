"""The `dagwire` command line (installed as the `dagwire_cli` package from `clients/python/`)."""
