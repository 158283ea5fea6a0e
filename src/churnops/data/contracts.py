"""The raw-table contract of DESIGN.md: column names, types, keys and optional columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ColumnType = Literal["int", "string", "timestamp", "float"]


@dataclass(frozen=True)
class TableContract:
    """What a raw table holds once a source's own names are mapped onto the contract."""

    name: str
    columns: dict[str, ColumnType]
    required: tuple[str, ...]
    key: str
    event_time: str | None = None

    @property
    def optional(self) -> tuple[str, ...]:
        """Columns a source may lack; features that need them are then absent."""
        return tuple(c for c in self.columns if c not in self.required)


ORDERS = TableContract(
    name="orders",
    columns={
        "order_id": "string",
        "customer_id": "int",
        "order_date": "timestamp",
        "total_amount": "float",
        "product_id": "string",
        "category": "string",
    },
    required=("order_id", "customer_id", "order_date", "total_amount"),
    key="order_id",
    event_time="order_date",
)

CUSTOMERS = TableContract(
    name="customers",
    columns={"customer_id": "int", "created_at": "timestamp", "status": "string"},
    required=("customer_id", "created_at"),
    key="customer_id",
)

PRODUCTS = TableContract(
    name="products",
    columns={"product_id": "string", "category": "string"},
    required=("product_id", "category"),
    key="product_id",
)

CONTRACTS: dict[str, TableContract] = {c.name: c for c in (ORDERS, CUSTOMERS, PRODUCTS)}
