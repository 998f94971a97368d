"""What the tests share: the database matrix, the fake OpenAI-compatible server, the
sync/async runners, the stored-session helpers, the record invariants, the stress
worker and the files mypy checks. Imported as ``support.<module>`` (``tests/`` is on
the path: ``pythonpath`` in pyproject.toml)."""
