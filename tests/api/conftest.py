"""Fixtures for API tests: one shared ``tunehouse serve`` process (see ``api_support``)."""

from __future__ import annotations

import pytest
from api_support import Server, start_server, stop_server


@pytest.fixture(scope="session")
def server(tmp_path_factory, tiny_model_dir) -> Server:
    """One shared server (1 worker) for the API tests."""
    srv = start_server(tmp_path_factory.mktemp("serve"), tiny_model_dir,
                       extra_env={"TUNEHOUSE_FAULTS": "step_sleep=0.3"})
    yield srv
    stop_server(srv)


