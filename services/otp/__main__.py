"""Run the otp service: ``python -m services.otp``."""

from services.otp.bootstrap import SPEC
from shared.service import run_forever

run_forever(SPEC)
