"""The smoke suite runs against the installed wheel, from outside the source tree.

``.ci/smoke`` copies this directory and ``tests/support/fake_openai.py`` to a temporary
directory and runs it there with a virtualenv that holds only the wheel (plus the
``sqlite-async`` extra and pytest).
"""

from __future__ import annotations

from pathlib import Path

import agent_session


def pytest_sessionstart() -> None:
    where = Path(agent_session.__file__).resolve()
    assert "site-packages" in where.parts, f"agent_session imported from {where}, not the wheel"
