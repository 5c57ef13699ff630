"""The command line: argv to one function per subcommand."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import version

import msgspec

from fastmta import config as config_module
from fastmta.config import Config, ConfigError

_json = msgspec.json.Encoder()


def _load(args: argparse.Namespace) -> Config:
    return config_module.load(args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from fastmta import supervisor

    return supervisor.run(args.config)


def cmd_status(args: argparse.Namespace) -> int:
    """Read from data_dir, as the admin's /health is: it answers with the admin down and needs no token."""
    from fastmta import overview, status_text

    config = _load(args)
    now = overview.read(config.data_dir, _store(args))
    if args.json:
        document = {**msgspec.to_builtins(now), "healthy": now.healthy, "listeners": status_text.listeners(config)}
        sys.stdout.write(_json.encode(document).decode() + "\n")
    else:
        sys.stdout.write(status_text.render(config, now))
    return 0 if now.healthy else 1


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    print(config_module.to_toml(_load(args), redact=not args.show_secrets), end="")
    return 0


# ----- queue ----------------------------------------------------------------------------------


def _store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fastmta.queue.store import QueueStore

    config = _load(args)
    return QueueStore.opened(config)


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(timestamp)) if timestamp else "-"


def cmd_queue_list(args: argparse.Namespace) -> int:
    from fastmta.queue.records import to_document
    from fastmta.queue.store import CorruptRecord

    store = _store(args)
    entries = list(store.scan())
    if args.json:
        rows = [
            {"id": e.message_id, "state": "corrupt", "error": e.reason}
            if isinstance(e, CorruptRecord)
            else to_document(e)
            for e in entries
        ]
        sys.stdout.write(_json.encode(rows).decode() + "\n")
        return 0
    for entry in entries:
        if isinstance(entry, CorruptRecord):
            print(f"{entry.message_id}  CORRUPT  {entry.reason}")
            continue
        print(
            f"{entry.id}  {entry.size:>9}  {_when(entry.received_at)}  {entry.state:<6}  <{entry.sender}>"
            f"  next {_when(entry.next_attempt)}"
        )
        for recipient in entry.recipients:
            waiting = f"  next {_when(recipient.next_attempt)}" if recipient.state == "deferred" else ""
            last = f"  ({recipient.last_reply})" if recipient.last_reply else ""
            print(f"    <{recipient.address}>  {recipient.state}  attempts {recipient.attempts}{waiting}{last}")
    print(f"-- {len(entries)} messages", file=sys.stderr)
    return 0


def cmd_queue_show(args: argparse.Namespace) -> int:
    from fastmta.queue.records import to_document

    store = _store(args)
    message = store.get(args.id)
    if message is None:
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    if args.body:
        sys.stdout.buffer.write(store.body(args.id) or b"")
        return 0
    sys.stdout.write(msgspec.json.format(_json.encode(to_document(message)).decode(), indent=2) + "\n")
    return 0


def cmd_queue_delete(args: argparse.Namespace) -> int:
    if not _store(args).delete(args.id):
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    print(f"{args.id}: deleted")
    return 0


def _hold(held: bool) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        store = _store(args)
        message = store.set_held(args.id, held)
        if message is None:
            print(f"no message {args.id}", file=sys.stderr)
            return 1
        if not held:
            _wake_runners(args)
        print(f"{args.id}: {message.state}")
        return 0

    return command


def _wake_runners(args: argparse.Namespace) -> None:
    from fastmta.queue.wakeup import Poker

    poker = Poker(_load(args).data_dir)
    poker.poke()
    poker.close()


def cmd_queue_flush(args: argparse.Namespace) -> int:
    from fastmta.queue.schedule import Scheduler

    count = Scheduler(_store(args)).make_due()
    _wake_runners(args)
    print(f"{count} messages due now")
    return 0


def cmd_queue_retry(args: argparse.Namespace) -> int:
    from fastmta.queue.records import HELD
    from fastmta.queue.schedule import Scheduler

    store = _store(args)
    message = store.get(args.id)
    if message is None:
        print(f"no message {args.id}", file=sys.stderr)
        return 1
    if Scheduler(store).make_due([args.id]):
        _wake_runners(args)
        print(f"{args.id}: due now")
    elif message.state == HELD:
        print(f"{args.id}: held; release it to have it sent (fastmta queue release {args.id})", file=sys.stderr)
        return 1
    elif message.lease_until > time.time():
        print(f"{args.id}: being delivered right now")
    else:
        print(f"{args.id}: already due")
    return 0


# ----- users ----------------------------------------------------------------------------------


def _access(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fastmta.access.stores import Access
    from fastmta.queue.store import QueueStore

    config = _load(args)
    return Access.opened(config, QueueStore.opened(config).env)


def _accounts(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return _access(args).accounts


def _password(args: argparse.Namespace, confirm: bool) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("Password: ")
    if confirm and getpass.getpass("Again: ") != password:
        raise SystemExit("passwords differ")
    return password


def _user_line(user) -> str:  # type: ignore[no-untyped-def]
    flags = ("enabled" if user.enabled else "disabled") + (" admin" if user.admin else "")
    quota = f" quota {user.quota}/day" if user.quota else ""
    return f"{user.username}  {flags}{quota}  created {_when(user.created_at)}"


def cmd_user_add(args: argparse.Namespace) -> int:
    from fastmta.access.accounts import AccountError

    password = _password(args, confirm=True)
    try:
        user = _accounts(args).add(args.username, password, admin=args.admin, quota=args.quota)
    except AccountError as exc:
        print(f"{args.username}: {exc}", file=sys.stderr)
        return 1
    print(f"added {_user_line(user)}")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    users = _accounts(args).list()
    if args.json:
        rows = [msgspec.structs.replace(u, password_hash="") for u in users]
        sys.stdout.write(_json.encode(rows).decode() + "\n")
    else:
        for user in users:
            print(_user_line(user))
    return 0


def _with_user(change: Callable[..., object]) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        from fastmta.access.accounts import AccountError

        try:
            result = change(_accounts(args), args)
        except AccountError as exc:
            print(f"{args.username}: {exc}", file=sys.stderr)
            return 1
        if result is None or result is False:
            print(f"{args.username}: no such user", file=sys.stderr)
            return 1
        print(_user_line(result) if hasattr(result, "username") else f"{args.username}: done")
        return 0

    return command


def _verify(accounts, args: argparse.Namespace) -> bool:  # type: ignore[no-untyped-def]
    ok = accounts.verify(args.username, _password(args, confirm=False))
    if not ok:
        raise SystemExit(f"{args.username}: verification failed")
    return True


USER_COMMANDS: dict[str, Callable[..., object]] = {
    "info": lambda accounts, args: accounts.get(args.username),
    "passwd": lambda accounts, args: accounts.set_password(args.username, _password(args, confirm=True)),
    "enable": lambda accounts, args: accounts.update(args.username, enabled=True),
    "disable": lambda accounts, args: accounts.update(args.username, enabled=False),
    "quota": lambda accounts, args: accounts.update(args.username, quota=args.quota),
    "delete": lambda accounts, args: accounts.delete(args.username),
    "verify": _verify,
}


# ----- admin API tokens -----------------------------------------------------------------------


def _tokens(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return _access(args).tokens


def cmd_token_create(args: argparse.Namespace) -> int:
    from fastmta.access.tokens import TokenExists

    try:
        token, text = _tokens(args).create(args.name, args.role, created_by="cli")
    except TokenExists as exc:
        print(f"{args.name}: {exc}", file=sys.stderr)
        return 1
    # Scripts take the last word; the token cannot be shown again.
    print(f"created {token.role} token {token.name} (id {token.id}): {text}")
    return 0


def cmd_token_import(args: argparse.Namespace) -> int:
    from fastmta.access.tokens import TokenExists

    text = sys.stdin.readline().strip()
    try:
        token, added = _tokens(args).adopt(text, args.name, args.role, created_by="cli")
    except (TokenExists, ValueError) as exc:
        print(f"{args.name}: {exc}", file=sys.stderr)
        return 1
    print(f"{'imported' if added else 'already present:'} {token.role} token {token.name} (id {token.id})")
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    tokens = _tokens(args).list()
    if args.json:
        rows = [msgspec.structs.replace(t, secret_hash="") for t in tokens]
        sys.stdout.write(_json.encode(rows).decode() + "\n")
    else:
        for token in tokens:
            print(f"{token.id}  {token.role:<8}  {token.name}  created {_when(token.created_at)} by {token.created_by or '-'}")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    tokens = _tokens(args)
    token = tokens.find(args.token)
    if token is None or tokens.revoke(token.id) is None:
        print(f"no token {args.token}", file=sys.stderr)
        return 1
    print(f"revoked {token.role} token {token.name} (id {token.id})")
    return 0


def cmd_access_share(args: argparse.Namespace) -> int:
    from fastmta.access.stores import Access, move, shared
    from fastmta.queue.store import QueueStore

    config = _load(args)
    if not shared(config):
        why = "[history] url names no PostgreSQL, so users, tokens and the audit log are this node's own"
        print(f"fastmta access share: {why}", file=sys.stderr)
        return 1
    env = QueueStore.opened(config).env
    moved = move(Access.local(env), Access.opened(config, env))
    print(f"moved {moved.users} users and {moved.tokens} tokens, copied {moved.audit} audit entries into the shared store")
    for name in moved.replaced:
        print(f"user {name}: the shared store has its own account of that name, whose password now applies", file=sys.stderr)
    for name in moved.name_taken:
        print(f"token {name}: not moved, another token has that name there (fastmta token list)", file=sys.stderr)
    return 1 if moved.name_taken else 0


# ----- DKIM keys ------------------------------------------------------------------------------


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    from fastmta.config import DkimKeyConfig
    from fastmta.dkim import keys

    try:
        entry = DkimKeyConfig(domain=args.domain, selector=args.selector)
    except ValueError as exc:
        print(f"fastmta dkim keygen: {exc}", file=sys.stderr)
        return 2
    data_dir = config_module.load(args.config, dkim_keys=False).data_dir
    path = keys.default_path(data_dir, entry.domain, entry.selector)
    if path.exists():
        print(f"{path} exists already: a key that may be signing is never replaced; choose a new selector", file=sys.stderr)
        return 1
    key = keys.generate(args.algorithm, args.bits)
    keys.write(data_dir, entry.domain, entry.selector, key)
    sys.stdout.write(keys.zone_entry(entry.domain, entry.selector, keys.dns_record(key)))
    print(
        f"key written to {path}\npublish the record above, then add to the config and reload:\n"
        f'[[dkim.keys]]\ndomain = "{entry.domain}"\nselector = "{entry.selector}"',
        file=sys.stderr,
    )
    return 0


# ----- store ----------------------------------------------------------------------------------


def cmd_store_decrypt(args: argparse.Namespace) -> int:
    """A sealed copy opened with [store] keys (whichever sealed it), to a file (0600) or standard output."""
    from fastmta.stores.sealed import Sealer, SealError

    sealer = Sealer.configured(_load(args).store)
    try:
        with open(args.file, "rb") as sealed:
            plain = sealer.unseal(sealed.read())
    except OSError as exc:
        print(f"{args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except SealError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.buffer.write(plain)
        return 0
    fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(plain)
    return 0


# ----- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", help="TOML config file (default: the embedded default)")
    parser = argparse.ArgumentParser(prog="fastmta", description="fastmta mail transfer agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('fastmta')}")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("serve", parents=[common], help="run everything in the foreground").set_defaults(
        func=cmd_serve
    )
    check = commands.add_parser("check-config", parents=[common], help="validate and print the effective config")
    check.add_argument("--show-secrets", action="store_true", help="print passwords, secrets and keys too (redacted otherwise)")
    check.set_defaults(func=cmd_check_config)

    status = commands.add_parser(
        "status", parents=[common], help="health, workers, queue, delivery, events lag and listeners (exit 1: unhealthy)"
    )
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(func=cmd_completion)

    queue = commands.add_parser("queue", help="inspect and manage the queue").add_subparsers(dest="action", required=True)
    listing = queue.add_parser("list", parents=[common], help="every queued message with its recipients")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_queue_list)
    show = queue.add_parser("show", parents=[common], help="one message's record, or its body")
    show.add_argument("id")
    show.add_argument("--body", action="store_true", help="print the stored message instead of its record")
    show.set_defaults(func=cmd_queue_show)
    for name, func in (
        ("delete", cmd_queue_delete),
        ("hold", _hold(True)),
        ("release", _hold(False)),
        ("retry", cmd_queue_retry),
    ):
        sub = queue.add_parser(name, parents=[common])
        sub.add_argument("id")
        sub.set_defaults(func=func)
    queue.add_parser("flush", parents=[common], help="make all deferred mail due now").set_defaults(func=cmd_queue_flush)

    password = argparse.ArgumentParser(add_help=False)
    password.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    users = commands.add_parser("user", help="SMTP AUTH accounts").add_subparsers(dest="action", required=True)
    add = users.add_parser("add", parents=[common, password])
    add.add_argument("username")
    add.add_argument("--admin", action="store_true", help="may use the admin API with HTTP Basic")
    add.add_argument("--quota", type=int, default=0, help="messages per day, 0 = unlimited")
    add.set_defaults(func=cmd_user_add)
    user_list = users.add_parser("list", parents=[common])
    user_list.add_argument("--json", action="store_true")
    user_list.set_defaults(func=cmd_user_list)
    for name, change in USER_COMMANDS.items():
        sub = users.add_parser(name, parents=[common, password])
        sub.add_argument("username")
        if name == "quota":
            sub.add_argument("quota", type=int)
        sub.set_defaults(func=_with_user(change))

    tokens = commands.add_parser("token", help="admin API tokens").add_subparsers(dest="action", required=True)
    create = tokens.add_parser("create", parents=[common], help="prints the new token as its last word")
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    create.add_argument("--name", required=True)
    create.set_defaults(func=cmd_token_create)
    adopt = tokens.add_parser(
        "import", parents=[common], help="store a token read from standard input (the same one on every node)"
    )
    adopt.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    adopt.add_argument("--name", required=True)
    adopt.set_defaults(func=cmd_token_import)
    token_list = tokens.add_parser("list", parents=[common])
    token_list.add_argument("--json", action="store_true")
    token_list.set_defaults(func=cmd_token_list)
    revoke = tokens.add_parser("revoke", parents=[common])
    revoke.add_argument("token", help="the token's id or name")
    revoke.set_defaults(func=cmd_token_revoke)

    access = commands.add_parser("access", help="where users, tokens and the audit log are kept").add_subparsers(
        dest="action", required=True
    )
    access.add_parser(
        "share",
        parents=[common],
        help="move this node's own (queue.lmdb) users and tokens into the cluster's PostgreSQL and copy its "
        "audit log there; what is there already stays",
    ).set_defaults(func=cmd_access_share)

    store = commands.add_parser("store", help="what routes of a storing kind stored").add_subparsers(dest="action", required=True)
    decrypt = store.add_parser("decrypt", parents=[common], help="open a sealed copy (encrypt = true) with [store] keys")
    decrypt.add_argument("file")
    decrypt.add_argument("--output", "-o", help="write here (mode 0600) instead of standard output")
    decrypt.set_defaults(func=cmd_store_decrypt)

    dkim = commands.add_parser("dkim", help="DKIM signing keys").add_subparsers(dest="action", required=True)
    keygen = dkim.add_parser(
        "keygen", parents=[common], help="make a key in data_dir/dkim/DOMAIN/SELECTOR.key and print its DNS TXT record"
    )
    keygen.add_argument("domain")
    keygen.add_argument("selector")
    keygen.add_argument(
        "--algorithm", choices=["rsa", "ed25519"], default="rsa", help="rsa-sha256 (default) or ed25519-sha256 (RFC 8463)"
    )
    keygen.add_argument("--bits", type=int, choices=[2048, 3072, 4096], default=2048, help="RSA key size (default 2048)")
    keygen.set_defaults(func=cmd_dkim_keygen)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"fastmta: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
