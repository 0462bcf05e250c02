"""Fixtures shared by the tests."""

import pytest

from emulators.bq_emulator import start_emulator

EMULATOR_PROJECT = "local-project"


@pytest.fixture(scope="session")
def bq_emulator(tmp_path_factory):
  """A local BigQuery emulator for the session: (handle, project id)."""
  log_path = tmp_path_factory.mktemp("bq_emulator") / "emulator.log"
  with start_emulator(EMULATOR_PROJECT, log_path=str(log_path)) as emulator:
    yield emulator, emulator.project
