"""A tiny key/value secrets engine: the smallest useful plugin built on the SDK.

Paths: ``kv/`` (list) and ``kv/<name>`` (read, create, update, delete), plus ``info``.
"""

from __future__ import annotations

from vault_plugin_sdk.framework import (
    Backend,
    BackendConfig,
    Field,
    FieldData,
    FieldType,
    Operation,
    OperationHandler,
    Path,
    Request,
    Response,
    SpecialPaths,
    StorageEntry,
    name_part,
)
from vault_plugin_sdk.plugin import serve

VERSION = "v0.1.0"


async def _exists(req: Request, data: FieldData) -> bool:
    return await req.storage.get(f"kv/{data.get('name')}") is not None


async def _read(req: Request, data: FieldData) -> Response | None:
    entry = await req.storage.get(f"kv/{data.get('name')}")
    return Response(data=entry.json()) if entry else None


async def _write(req: Request, data: FieldData) -> Response | None:
    value = data.get("value")
    if not value:
        return Response.error("'value' must be a non-empty object")
    await req.storage.put(StorageEntry.from_json(f"kv/{data.get('name')}", value, seal_wrap=True))
    return None


async def _delete(req: Request, data: FieldData) -> Response | None:
    await req.storage.delete(f"kv/{data.get('name')}")
    return None


async def _list(req: Request, data: FieldData) -> Response | None:
    return Response.list(await req.storage.list("kv/"))


async def _info(req: Request, data: FieldData) -> Response | None:
    return Response(data={"mount_point": req.mount_point, "version": VERSION})


async def factory(config: BackendConfig) -> Backend:
    """One backend per mount."""
    name = {"name": Field(FieldType.NAME, "Name of the entry.")}
    return Backend(
        help="A tiny key/value store, the SDK's example plugin.",
        storage=config.storage,
        special_paths=SpecialPaths(seal_wrap_storage=("kv/",)),
        paths=[
            Path(
                pattern="kv/?",
                operations={Operation.LIST: OperationHandler(_list, "List entry names.")},
                help_synopsis="List entries.",
            ),
            Path(
                pattern=f"kv/{name_part('name')}",
                fields={**name, "value": Field(FieldType.MAP, "The entry's data (an object).")},
                existence_check=_exists,
                operations={
                    Operation.READ: OperationHandler(_read, "Read an entry."),
                    Operation.CREATE: OperationHandler(_write, "Create an entry."),
                    Operation.UPDATE: OperationHandler(_write, "Replace an entry."),
                    Operation.DELETE: OperationHandler(_delete, "Delete an entry."),
                },
                help_synopsis="Read and write one entry.",
            ),
            Path(
                pattern="info",
                operations={Operation.READ: OperationHandler(_info, "Describe the mount.")},
                help_synopsis="The mount point and plugin version.",
            ),
        ],
    )


def main() -> int:
    """Entry point of the example plugin's executable."""
    return serve(factory, version=VERSION, log_to_host=True, no_core_dumps=True)


if __name__ == "__main__":
    raise SystemExit(main())
