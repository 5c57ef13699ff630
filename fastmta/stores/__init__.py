"""Where routes of a storing kind put their copies: maildir, mbox, eml-tree, sqlite, s3, each one module, optionally sealed.

Every store is blocking and durable when put() returns; the delivery runner calls it in a thread
of its own and settles a recipient only after that. The admin API (search) and the CLI (decrypt)
read what they stored, so they live here rather than in the runner's package.
"""

from __future__ import annotations

from pathlib import Path

from fastmta.config import STORE_KINDS, RouteConfig, StoreConfig
from fastmta.stores.base import Store
from fastmta.stores.eml_tree import EmlTreeStore
from fastmta.stores.maildir import MaildirStore
from fastmta.stores.mbox import MboxStore
from fastmta.stores.sealed import SealedStore, Sealer
from fastmta.stores.sqlite import SqliteStore

__all__ = ["STORE_KINDS", "opened"]


# The stores of a path on this machine, by kind; s3 is the one that is not.
_LOCAL: dict[str, type[MaildirStore | MboxStore | EmlTreeStore | SqliteStore]] = {
    "maildir": MaildirStore, "mbox": MboxStore, "eml-tree": EmlTreeStore, "sqlite": SqliteStore,
}  # fmt: skip


def opened(route: RouteConfig, store: StoreConfig) -> Store:
    """The store of a route whose kind is one of STORE_KINDS (the config checked its keys)."""
    made: Store
    if route.kind in _LOCAL:
        made = _LOCAL[route.kind](Path(route.path))
    else:
        from fastmta.stores.s3 import S3Store  # boto3 is an extra: imported only where a route needs it

        made = S3Store(route)
    return SealedStore(made, Sealer.configured(store)) if route.encrypt else made
