"""Run the payment service: ``python -m services.payment``."""

from services.payment.bootstrap import SPEC
from shared.service import run_forever

run_forever(SPEC)
