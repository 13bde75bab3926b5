"""Run the email service: ``python -m services.email``."""

from services.email.bootstrap import SPEC
from shared.service import run_forever

run_forever(SPEC)
