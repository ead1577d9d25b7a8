"""``banditops catalog load``: bulk-load items from CSV or Parquet into the event store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from eventstore.console import error

console = Console()
#: Items per transaction of a catalog load: each transaction holds its items' rows until it
#: commits, and a running service's impression counts wait for them (5,000 a transaction
#: kept them past their 2 s lock timeout on PostgreSQL: the service journaled its events).
LOAD_BATCH = 500
catalog_app = typer.Typer(help="The item catalog.", no_args_is_help=True)


@catalog_app.command("load")
def catalog_load(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV or Parquet file.")],
    url: Annotated[
        str | None,
        typer.Option("--url", help="SQLAlchemy URL (default: the settings' event store)."),
    ] = None,
    id_column: Annotated[str, typer.Option(help="Column of the item ids.")] = "id",
    feature_prefix: Annotated[str, typer.Option(help="Prefix of the feature columns.")] = "f_",
    embedding_prefix: Annotated[
        str, typer.Option(help="Prefix of the embedding columns (optional).")
    ] = "e_",
    batch: Annotated[int, typer.Option(min=1, help="Items per transaction.")] = LOAD_BATCH,
) -> None:
    """Add the file's items to the catalog (a new version for ids already there whose
    features or embedding differ; an item exactly as it is stays at its version).

    A running service picks the changes up from the catalog's change feed.
    """
    from eventstore.engine import make_engine
    from eventstore.migrate import StoreSchemaError, require_current
    from serving.catalog.loader import items_from_table, read_table
    from serving.catalog.store import CatalogStore
    from serving.inputs import InputError
    from serving.settings import Settings

    try:
        frame = read_table(path, id_column)
        batches = list(items_from_table(frame, id_column, feature_prefix, embedding_prefix, batch))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="PATH") from exc
    engine = make_engine(url or Settings().store_url)
    try:
        try:
            require_current(engine)
        except StoreSchemaError as exc:  # an operator error, as every command's: exit 2
            error(str(exc))
            raise typer.Exit(code=2) from exc
        store = CatalogStore(engine)
        count, unchanged, newest = 0, 0, 0
        for items in batches:
            try:
                records = store.upsert(items)
            except InputError as exc:
                raise typer.BadParameter(
                    f"{' '.join(map(str, exc.loc[1:]))}: {exc.message}", param_hint="PATH"
                ) from exc
            count += len(records)
            unchanged += sum(r.unchanged for r in records)
            newest = max([newest, *(r.seq for r in records)])
    finally:
        engine.dispose()
    console.print(
        f"loaded {count} items from {path.name} ({count - unchanged} new versions, "
        f"{unchanged} unchanged); catalog change {newest}"
    )
