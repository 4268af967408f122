"""The reliability suite. A package, so that its conftest.py is `reliability.conftest` and the
other test folders' `from conftest import ...` still finds tests/conftest.py."""
