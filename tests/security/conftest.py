"""Attack tests reuse the end-to-end fixtures (a fresh database per test, on both backends)."""

from tests.e2e.conftest import database_url

__all__ = ["database_url"]
