"""Command line for the relay: ``python -m t2t.server --help``."""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import ssl
import sys
from pathlib import Path

import trio

from t2t._version import __version__
from t2t.errors import KeyFileError
from t2t.server.config import RelayConfig
from t2t.server.credentials import Credentials, SetupError, load_development, load_production
from t2t.server.passwords import DEFAULT_MEMLIMIT, DEFAULT_OPSLIMIT, MIB, HashCost
from t2t.server.relay import Relay
from t2t.server.storage import Store
from t2t.server.transport import ListenError

log = logging.getLogger("t2t.relay")

EXIT_SETUP_ERROR = 2
CLIENT_REQUEST_TIMEOUT = 30.0  # seconds, t2t.connect()'s default request_timeout
SHUTDOWN_GRACE = 4.0  # seconds for connections to close after SIGINT/SIGTERM


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in --help, except for options without one."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    defaults = RelayConfig()
    parser = argparse.ArgumentParser(
        prog="python -m t2t.server",
        description=(
            "Run a t2t relay. It routes end-to-end encrypted group messages between "
            "clients and never sees their plaintext. Stop it with Ctrl-C or SIGTERM."
        ),
        formatter_class=_DefaultsFormatter,
    )
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host",
        default=defaults.host,
        help="address to listen on; use :: or 0.0.0.0 for all interfaces",
    )
    net.add_argument(
        "--port", type=int, default=defaults.port, help="TCP port to listen on; 0 picks a free port"
    )
    net.add_argument(
        "--tls-cert",
        type=Path,
        help="PEM certificate chain; with --tls-key, serve wss:// instead of ws://",
    )
    net.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")

    keys = parser.add_argument_group("identity")
    keys.add_argument(
        "--data-dir",
        type=Path,
        default=Path("t2t-data"),
        help="folder for the account database, relay key and development CA",
    )
    keys.add_argument(
        "--cert",
        type=Path,
        help=(
            "relay certificate signed by your CA (python -m t2t.ca sign); "
            "without it, a development CA is created in --data-dir"
        ),
    )
    keys.add_argument(
        "--key",
        type=Path,
        help="relay private key file, created with mode 0600 if missing (default: DATA_DIR/relay.key)",  # noqa: E501
    )
    keys.add_argument(
        "--ca",
        type=Path,
        help="CA public key file; with --cert, also check the certificate's CA signature at start",
    )
    keys.add_argument(
        "--name",
        help=(
            "relay name written into a development certificate; clients must use this "
            "name, which by default is the host in their URL (default: --host)"
        ),
    )

    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-message-size",
        type=int,
        default=defaults.max_message_size,
        help="largest inbound WebSocket message, in bytes; a larger one closes with code 1009",
    )
    limits.add_argument(
        "--queue-size",
        type=int,
        default=defaults.queue_size,
        help="outbound frames queued per connection; a sender waits while a recipient's is full",
    )
    limits.add_argument(
        "--send-timeout",
        type=float,
        default=defaults.send_timeout,
        help=(
            "seconds a connection's queue may stay full, or a message for it may wait to be "
            "written, before it is dropped as a slow consumer; a sender's ack can wait this "
            "long, so keep it below the clients' request timeout (30 s by default)"
        ),
    )
    limits.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        help=(
            "seconds without any bytes from a client, WebSocket pings included, before its "
            "connection is closed"
        ),
    )
    limits.add_argument(
        "--login-timeout",
        type=float,
        default=defaults.login_timeout,
        help="seconds a new connection has to log in",
    )
    limits.add_argument(
        "--roster-debounce",
        type=float,
        default=defaults.roster_debounce,
        help="seconds to gather roster changes before pushing one update",
    )
    limits.add_argument(
        "--max-accounts",
        type=int,
        default=defaults.max_accounts,
        help="registrations beyond this many accounts are rejected; the roster lists them all",
    )
    limits.add_argument(
        "--max-pending-logins",
        type=int,
        default=defaults.max_pending_logins,
        help="password checks queued at once; further logins are rejected with close code 1013",
    )
    limits.add_argument(
        "--resume-ttl",
        type=float,
        default=defaults.resume_ttl,
        help=(
            "seconds a resume token stays valid; a returning client with a valid token "
            "skips the password hash (0 disables tokens)"
        ),
    )
    limits.add_argument(
        "--hash-threads",
        type=int,
        default=defaults.hash_threads,
        help="password hashes computed at once, each in its own worker thread",
    )
    limits.add_argument(
        "--hash-ops",
        type=int,
        default=DEFAULT_OPSLIMIT,
        help="argon2id passes (t) for new password hashes",
    )
    limits.add_argument(
        "--hash-memory",
        type=int,
        default=DEFAULT_MEMLIMIT // MIB,
        help="argon2id memory (m) for new password hashes, in MiB",
    )

    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="minimum level of log records written to stderr",
    )
    parser.add_argument("--version", action="version", version=f"t2t {__version__}")
    return parser


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise SetupError("--tls-cert and --tls-key must be given together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(
            f"cannot load TLS certificate {args.tls_cert} and key {args.tls_key}: {exc}"
        ) from None
    return context


def _credentials(args: argparse.Namespace) -> Credentials:
    key_path = args.key if args.key is not None else args.data_dir / "relay.key"
    try:
        if args.cert is not None:
            return load_production(args.cert, key_path, args.ca)
        return load_development(args.data_dir, key_path, args.name or args.host)
    except KeyFileError as exc:
        raise SetupError(str(exc)) from None


async def _run(relay: Relay) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.serve)
            async for signum in signals:
                log.info(
                    "received %s, closing %d connections",
                    signal.Signals(signum).name,
                    relay.connection_count,
                )
                relay.shutdown(grace=SHUTDOWN_GRACE)
                with trio.move_on_after(SHUTDOWN_GRACE):
                    await relay.wait_all_closed()
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = RelayConfig(
            host=args.host,
            port=args.port,
            max_message_size=args.max_message_size,
            queue_size=args.queue_size,
            send_timeout=args.send_timeout,
            idle_timeout=args.idle_timeout,
            login_timeout=args.login_timeout,
            roster_debounce=args.roster_debounce,
            hash_threads=args.hash_threads,
            resume_ttl=args.resume_ttl,
            max_accounts=args.max_accounts,
            max_pending_logins=args.max_pending_logins,
            hash_cost=HashCost(args.hash_ops, args.hash_memory * MIB),
            ssl_context=_ssl_context(args),
        )
        credentials = _credentials(args)
    except (ValueError, SetupError) as exc:
        parser.exit(EXIT_SETUP_ERROR, f"error: {exc}\n")
    except OSError as exc:
        # For example --data-dir names a file, or a folder we may not write.
        parser.exit(
            EXIT_SETUP_ERROR,
            f"error: cannot use the data folder {args.data_dir}: {exc}; "
            "pass --data-dir with a folder this user can write\n",
        )
    if config.send_timeout >= CLIENT_REQUEST_TIMEOUT:
        log.warning(
            "--send-timeout %g s is not below the clients' default request timeout of %g s: "
            "a send to a group with a stalled member can time out before that member is dropped",
            config.send_timeout,
            CLIENT_REQUEST_TIMEOUT,
        )

    if credentials.ca_public_file is not None:
        log.warning(
            "development CA in use: give clients the CA public key file %s "
            "(relay name %r); use --cert with your own CA in production",
            credentials.ca_public_file.resolve(),
            credentials.body.name,
        )
    store = Store(args.data_dir / "relay.sqlite3")
    relay = Relay(config, credentials.key, credentials.certificate, store)
    # Move everything allocated so far (modules, classes, the parsed
    # configuration) out of the collector's reach. A full collection then
    # scans only the objects of live connections: with the 33,000 startup
    # objects included, one took 10 to 12 ms on the 2-core machine in
    # docs/benchmarks.md, long enough to stall every connection.
    gc.collect()
    gc.freeze()
    try:
        trio.run(_run, relay)
    except (ListenError, BaseExceptionGroup) as exc:
        # Binding happens inside nurseries, which wrap the error in groups.
        error = _only_listen_error(exc)
        if error is None:
            raise
        log.error("cannot listen on %s port %d: %s", args.host, args.port, error.error)
        return EXIT_SETUP_ERROR
    finally:
        store.close()
    return 0


def _only_listen_error(exc: BaseException) -> ListenError | None:
    """Return the ListenError if ``exc`` is one, or a group holding nothing else."""
    if isinstance(exc, ListenError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        errors, rest = exc.split(ListenError)
        if errors is not None and rest is None:
            leaf: BaseException = errors
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, ListenError) else None
    return None
