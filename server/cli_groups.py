"""`tessera groups`: maintenance of the feature groups in a stopped server's data directory.

    tessera groups list   [--data-dir DIR]           each group: #id, name, why it is quarantined
    tessera groups rename OLD NEW [--data-dir DIR]   fix a group whose name breaks the rule

OLD is the group's name or `#ID` (its id, as `list` shows: for a name too long or odd to type).
A rename keeps the group's id, online records, aggregation tiles and offline history: it
rewrites the registry entry and moves the offline folder (and its `_group.json`), all or
nothing. The server must be stopped (RocksDB admits one process); start it again afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tessera.core.errors import FeatureGroupNotFoundError, StorageError

if TYPE_CHECKING:
    from tessera.server.offline_writer import ParquetOfflineWriter
    from tessera.server.registry import FeatureGroupRegistry


@contextlib.contextmanager
def _opened(
    data_dir: Path | None,
) -> Iterator[tuple[FeatureGroupRegistry, ParquetOfflineWriter]]:
    from tessera.server.offline_writer import ParquetOfflineWriter
    from tessera.server.registry import FeatureGroupRegistry
    from tessera.server.rocksdb import open_rocksdb
    from tessera.server.settings import Settings

    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    path = settings.data_dir / "online"
    if not path.is_dir():
        raise StorageError(f"no online store at {path}; pass --data-dir")
    try:
        rocks = open_rocksdb(path, block_cache_mb=8, write_buffer_mb=4)
    except Exception as exc:  # RocksDB's lock, most likely: a server runs on this directory
        message = exc.message if isinstance(exc, StorageError) else f"cannot open {path}: {exc}"
        raise StorageError(f"{message}; if a server runs on this directory, stop it first") from exc
    try:
        yield FeatureGroupRegistry(rocks), ParquetOfflineWriter(settings.offline_root)
    finally:
        rocks.close()


def _find(registry: FeatureGroupRegistry, ref: str) -> str:
    """A group's name from a name or '#<id>'."""
    if ref.startswith("#") and ref[1:].isdigit():
        found = registry.by_id(int(ref[1:]))
        if found is None or found[1]:
            raise FeatureGroupNotFoundError(ref)
        return found[0].name
    registry.describe(ref)  # FeatureGroupNotFoundError
    return ref


def _list(args: argparse.Namespace) -> int:
    from tessera.core.schema import show_name

    with _opened(args.data_dir) as (registry, _):
        quarantined = registry.quarantined()
        for group in registry.list():
            reason = quarantined.get(group.name)
            print(f"#{group.feature_group_id}\t{show_name(group.name)}"
                  + (f"\tQUARANTINED: {reason}" if reason else ""))
        for name in sorted(set(quarantined) - {g.name for g in registry.list()}):
            print(f"-\t{show_name(name)}\tQUARANTINED: {quarantined[name]}")
    return 0


def _rename(args: argparse.Namespace) -> int:
    from tessera.core.schema import show_name

    with _opened(args.data_dir) as (registry, offline):
        old = _find(registry, args.old)
        new = registry.rename(old, args.new, move=offline.rename_group)
    print(f"renamed feature group {show_name(old)} to {show_name(new.name)} "
          f"(#{new.feature_group_id}); start the server again")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `tessera groups list|rename` to the CLI's subcommands."""
    groups = sub.add_parser("groups", help="feature groups of a stopped server's data directory")
    commands = groups.add_subparsers(dest="groups_command", required=True)
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", type=Path,
                          help="data directory (default ./tessera-data or TESSERA_DATA_DIR)")

    listing = commands.add_parser("list", parents=[data_dir],
                                  help="each group (#id, name), and why it is quarantined")
    listing.set_defaults(func=_list)

    rename = commands.add_parser("rename", parents=[data_dir],
                                 help="rename a group: the fix for a name breaking the rule")
    rename.add_argument("old", help="the group's name, or #ID as `tessera groups list` shows")
    rename.add_argument("new", help="its new name: 1-64 letters, digits, '-' or '_' between")
    rename.set_defaults(func=_rename)
