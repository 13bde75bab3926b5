"""The ``bitloot`` command line: operations that are not a running service."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pydantic import SecretStr, ValidationError

from shared.auth import (
    METRICS_SCOPE,
    KeyFileError,
    TokenIssuer,
    generate_key_pair,
    load_private_key,
)
from shared.db import MigrationError, discover_migrations, migrate
from shared.settings import (
    CommonSettings,
    SettingsError,
    describe_validation_error,
    load_settings,
)

# Each service's wiring, imported only when a command needs it.
SERVICE_SPECS = {
    "email": "services.email.bootstrap",
    "otp": "services.otp.bootstrap",
    "payment": "services.payment.bootstrap",
    "webhook-ingest": "services.webhook_ingest.bootstrap",
}
DAY = 24 * 3600
# Where make run keeps its keys; used when no key file is configured.
DEV_PRIVATE_KEY = Path(".run/keys/jwt-private.pem")
# Where make run keeps the IPN secret; used when none is set in the environment.
DEV_IPN_SECRET = Path(".run/secrets/nowpayments-ipn-secret")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.command(args)
    except (
        SettingsError,
        KeyFileError,
        MigrationError,
        MissingInputError,
        OSError,
    ) as error:
        print(f"bitloot {args.name}: {error}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitloot", description="Operate the BitLoot services."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    migrate_cmd = commands.add_parser(
        "migrate", help="apply pending database migrations"
    )
    migrate_cmd.add_argument(
        "services",
        nargs="*",
        metavar="SERVICE",
        help=f"services to migrate, of {', '.join(SERVICE_SPECS)} (default: all)",
    )
    migrate_cmd.set_defaults(command=_migrate, name="migrate")

    token = commands.add_parser(
        "token", help="mint a bearer token and print it alone on stdout"
    )
    token.add_argument(
        "--scope",
        action="append",
        required=True,
        help="a scope to grant, e.g. metrics:read (repeatable)",
    )
    token.add_argument("--subject", default="operator", help="who the token is for")
    token.add_argument(
        "--ttl-days", type=float, default=30, help="lifetime in days (default 30)"
    )
    token.set_defaults(command=_token, name="token")

    keygen = commands.add_parser(
        "keygen", help="write a new Ed25519 key pair for signing tokens"
    )
    keygen.add_argument("directory", type=Path, help="folder for the two PEM files")
    keygen.add_argument(
        "--force", action="store_true", help="replace keys that already exist"
    )
    keygen.set_defaults(command=_keygen, name="keygen")

    simulate = commands.add_parser(
        "simulate", help="play provider webhooks against the services on this machine"
    )
    simulations = simulate.add_subparsers(required=True, metavar="WHAT")
    payment = simulations.add_parser(
        "payment",
        help="send the signed NOWPayments IPNs of a simulated payment",
        description=(
            "Send webhook-ingest the IPNs NOWPayments would send for an order's "
            "payment, then wait for the payment service to show the last one. "
            "Only for payments opened by the simulator provider."
        ),
    )
    payment.add_argument(
        "order_id", metavar="ORDER_ID", help="the order, as POST /v1/orders named it"
    )
    ending = payment.add_mutually_exclusive_group()
    ending.add_argument(
        "--paid",
        type=_amount,
        metavar="AMOUNT",
        help="amount paid in the pay currency (default: exactly the amount due); "
        "less than due leaves the order underpaid",
    )
    ending.add_argument(
        "--expire",
        dest="outcome",
        action="store_const",
        const="expire",
        help="let the payment expire unpaid",
    )
    ending.add_argument(
        "--fail",
        dest="outcome",
        action="store_const",
        const="fail",
        help="let the payment fail after it was seen",
    )
    payment.add_argument(
        "--wait",
        type=_seconds,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for the order to move (default 15)",
    )
    payment.set_defaults(
        command=_simulate_payment, name="simulate payment", outcome="pay"
    )

    smoke = commands.add_parser(
        "smoke",
        help="drive every service once and check that each metric moved",
        description=(
            "Check health, the metrics token, the OTP rate limit and a wrong "
            "code, an order and its email, a bad webhook signature, a duplicate "
            "and an underpayment against the running services (make run's "
            "ports, or BITLOOT_OTP_URL, BITLOOT_EMAIL_URL, BITLOOT_PAYMENT_URL, "
            "BITLOOT_WEBHOOK_INGEST_URL). Exits 1 when a step fails."
        ),
    )
    smoke.add_argument(
        "--wait",
        type=_seconds,
        default=20.0,
        metavar="SECONDS",
        help="how long a step waits for its metric to move (default 20)",
    )
    smoke.set_defaults(command=_smoke, name="smoke")
    return parser


def _amount(text: str) -> Decimal:
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text!r}")
    return amount


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text!r}")
    return seconds


def _migrate(args: argparse.Namespace) -> int:
    unknown = sorted(set(args.services) - set(SERVICE_SPECS))
    if unknown:
        known = ", ".join(SERVICE_SPECS)
        message = f"bitloot migrate: no service {', '.join(unknown)}; known: {known}"
        print(message, file=sys.stderr)
        return 2
    settings = load_settings(CommonSettings)
    for name in args.services or list(SERVICE_SPECS):
        spec = importlib.import_module(SERVICE_SPECS[name]).SPEC
        applied = asyncio.run(
            migrate(
                settings.database_url,
                spec.schema,
                discover_migrations(spec.migrations_dir),
            )
        )
        state = f"applied {', '.join(applied)}" if applied else "up to date"
        print(f"{name}: {state}", file=sys.stderr)
    return 0


class MissingInputError(Exception):
    """A command needs a key or secret that is neither configured nor in .run/."""


def _issuer() -> TokenIssuer:
    """The token issuer of the configured private key, or make run's one."""
    settings = load_settings(CommonSettings)
    key_file = settings.jwt_private_key_file
    if key_file is None and DEV_PRIVATE_KEY.exists():
        key_file = DEV_PRIVATE_KEY
    if key_file is None:
        raise MissingInputError(
            "set BITLOOT_JWT_PRIVATE_KEY_FILE to the private key "
            f"(make run writes one to {DEV_PRIVATE_KEY})"
        )
    return TokenIssuer(
        load_private_key(key_file),
        settings.jwt_issuer,
        settings.jwt_audience,
    )


def _ipn_secret(given: SecretStr | None) -> str:
    """The NOWPayments IPN secret from the environment, or make run's one."""
    secret = given.get_secret_value() if given is not None else ""
    if not secret and DEV_IPN_SECRET.exists():
        secret = DEV_IPN_SECRET.read_text().strip()
    if not secret:
        raise MissingInputError(
            "set BITLOOT_NOWPAYMENTS_IPN_SECRET to webhook-ingest's IPN secret "
            f"(make run writes one to {DEV_IPN_SECRET})"
        )
    return secret


def _token(args: argparse.Namespace) -> int:
    ttl = int(args.ttl_days * DAY)
    print(_issuer().mint(args.subject, args.scope, ttl))
    return 0


def _smoke(args: argparse.Namespace) -> int:
    from shared import smoke

    try:
        settings = smoke.SmokeSettings()
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
    token = _issuer().mint("smoke", [METRICS_SCOPE], 3600)
    return asyncio.run(
        smoke.run_smoke(
            settings,
            token=token,
            ipn_secret=_ipn_secret(settings.nowpayments_ipn_secret),
            out=sys.stdout,
            wait_seconds=args.wait,
        )
    )


def _simulate_payment(args: argparse.Namespace) -> int:
    from services.payment import simulator

    try:
        settings = simulator.SimulateSettings()
    except ValidationError as error:
        raise SettingsError(describe_validation_error(error)) from None
    secret = _ipn_secret(settings.nowpayments_ipn_secret)
    return asyncio.run(
        simulator.simulate_payment(
            args.order_id,
            paid=args.paid,
            outcome=args.outcome,
            settings=settings,
            secret=secret,
            wait_seconds=args.wait,
            out=sys.stderr,
        )
    )


def _keygen(args: argparse.Namespace) -> int:
    directory: Path = args.directory
    existing = directory / "jwt-private.pem"
    if existing.exists() and not args.force:
        print(
            f"{existing} exists; keeping it (use --force to replace)", file=sys.stderr
        )
        return 0
    private_path, public_path = generate_key_pair(directory)
    print(f"wrote {private_path} and {public_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
