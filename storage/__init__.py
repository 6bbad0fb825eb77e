"""Storage adapters: SQLAlchemy 2 async tables and repositories behind ``core.ports``, the unit of
work, Alembic migrations (``storage.migrate``) and the AES-GCM vault (``storage.crypto``)."""
