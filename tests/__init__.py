"""dagwire's tests (a package, so shared suites such as `tests.store_contract` import by name)."""
