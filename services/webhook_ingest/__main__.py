"""Run webhook-ingest: ``python -m services.webhook_ingest``."""

from services.webhook_ingest.bootstrap import SPEC
from shared.service import run_forever

run_forever(SPEC)
