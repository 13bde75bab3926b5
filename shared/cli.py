"""The ``bitloot`` command line: operations that are not a running service."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from shared.auth import KeyFileError, TokenIssuer, generate_key_pair, load_private_key
from shared.db import MigrationError, discover_migrations, migrate
from shared.settings import CommonSettings, SettingsError, load_settings

# Each service's wiring, imported only when a command needs it.
SERVICE_SPECS = {
    "webhook-ingest": "services.webhook_ingest.bootstrap",
}
DAY = 24 * 3600
# Where make run keeps its keys; used when no key file is configured.
DEV_PRIVATE_KEY = Path(".run/keys/jwt-private.pem")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.command(args)
    except (SettingsError, KeyFileError, MigrationError, OSError) as error:
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
    return parser


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


def _token(args: argparse.Namespace) -> int:
    settings = load_settings(CommonSettings)
    key_file = settings.jwt_private_key_file
    if key_file is None and DEV_PRIVATE_KEY.exists():
        key_file = DEV_PRIVATE_KEY
    if key_file is None:
        print(
            "bitloot token: set BITLOOT_JWT_PRIVATE_KEY_FILE to the private key "
            f"(make run writes one to {DEV_PRIVATE_KEY})",
            file=sys.stderr,
        )
        return 2
    issuer = TokenIssuer(
        load_private_key(key_file),
        settings.jwt_issuer,
        settings.jwt_audience,
    )
    ttl = int(args.ttl_days * DAY)
    print(issuer.mint(args.subject, args.scope, ttl))
    return 0


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
