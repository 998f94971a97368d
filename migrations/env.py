"""Alembic environment for the example models (``examples/models.py``).

The database URL is, first found wins:

1. ``-x url=...`` on the command line,
2. the ``AGENT_SESSION_DATABASE_URL`` environment variable,
3. ``sqlalchemy.url`` in ``alembic.ini`` (a SQLite file in the repository root).

The models come from the file named by ``models_file`` in ``alembic.ini``. Code
that runs Alembic through ``alembic.command`` can pass its own metadata as
``config.attributes["target_metadata"]`` instead. In your own project, replace
``_target_metadata()`` with ``from myapp.models import Base`` and
``target_metadata = Base.metadata``: the mixin's columns are ordinary columns of
your tables, and generated revisions only need ``alembic`` and ``sqlalchemy``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from logging.config import fileConfig
from pathlib import Path

import sqlalchemy as sa
from alembic import context
from sqlalchemy.pool import NullPool

URL_ENV = "AGENT_SESSION_DATABASE_URL"
_MODELS_MODULE = "_agent_session_example_models"

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _database_url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get(URL_ENV)
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise RuntimeError(
            f"no database URL: pass -x url=..., set {URL_ENV} or sqlalchemy.url in alembic.ini"
        )
    return url


def _load_models(path: Path) -> object:
    """Import the models file by path (``examples/`` is not an installed package)."""
    loaded = sys.modules.get(_MODELS_MODULE)
    if loaded is not None and Path(str(loaded.__file__)) == path:
        return loaded
    spec = importlib.util.spec_from_file_location(_MODELS_MODULE, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import the models file {path}")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: Pydantic and SQLAlchemy resolve the string
    # annotations of ``from __future__ import annotations`` through sys.modules.
    sys.modules[_MODELS_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODELS_MODULE]
        raise
    return module


def _target_metadata() -> sa.MetaData:
    metadata = config.attributes.get("target_metadata")
    if metadata is not None:
        return metadata  # type: ignore[no-any-return]
    models_file = config.get_main_option("models_file")
    if not models_file:
        raise RuntimeError("set models_file in alembic.ini (the file that defines Base)")
    module = _load_models(Path(models_file).resolve())
    return module.Base.metadata  # type: ignore[attr-defined,no-any-return]


target_metadata = _target_metadata()


def run_migrations_offline() -> None:
    """Emit the SQL to stdout instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = sa.create_engine(_database_url(), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
