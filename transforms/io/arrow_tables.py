"""Output rows as an Arrow table of their table's schema, for Parquet files.

Pure (pyarrow). Takes what the sinks take: row dicts and `json_lines.RowBatch`es.
TIMESTAMP and DATE values travel as text (`schemas.format_timestamp`) and
become Arrow timestamps (UTC, microseconds) and dates here, so the files load
into the BigQuery tables of the same schema.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.io import json_lines
from transforms.io import schemas

_TYPES = {
    "STRING": pa.string(),
    "INT64": pa.int64(),
    "FLOAT64": pa.float64(),
    "BOOL": pa.bool_(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "DATE": pa.date32(),
}
_AS_TEXT = {"TIMESTAMP", "DATE"}


def _field(name: str, kind, mode: str, as_text: bool = False) -> pa.Field:
  if isinstance(kind, tuple):  # A RECORD: its fields.
    value_type = pa.struct([_field(*field, as_text=as_text) for field in kind])
  elif as_text and kind in _AS_TEXT:
    value_type = pa.string()
  else:
    value_type = _TYPES[kind]
  if mode == "REPEATED":
    return pa.field(name, pa.list_(value_type))
  return pa.field(name, value_type)


def arrow_schema(table: schemas.Table) -> pa.Schema:
  """The table's columns as Arrow types (every field nullable)."""
  return pa.schema([_field(*field) for field in table.fields])


def _text_schema(table: schemas.Table) -> pa.Schema:
  """As `arrow_schema`, with timestamps and dates as the text rows carry."""
  return pa.schema([_field(*field, as_text=True) for field in table.fields])


def _from_rows(rows: list[dict], table: schemas.Table,
               schema: pa.Schema) -> pa.Table:
  text = pa.Table.from_pylist(rows, schema=_text_schema(table))
  return pa.Table.from_arrays(
      [pc.cast(text[field.name], field.type) for field in schema],
      schema=schema)


def _repeat(value, text_type: pa.DataType, arrow_type: pa.DataType,
            rows: int) -> pa.Array:
  """`rows` times `value`, converted once."""
  if pa.types.is_list(arrow_type):  # pa.repeat goes value by value for lists.
    values = pa.array(list(value) * rows, arrow_type.value_type)
    offsets = np.arange(rows + 1, dtype=np.int32) * len(value)
    return pa.ListArray.from_arrays(pa.array(offsets), values)
  return pa.repeat(pa.scalar(value, text_type).cast(arrow_type), rows)


def _from_batch(batch: json_lines.RowBatch, table: schemas.Table,
                schema: pa.Schema) -> pa.Table:
  rows = batch.table.num_rows
  columns = []
  for field, text_field in zip(schema, _text_schema(table)):
    if field.name in batch.table.column_names:
      columns.append(pc.cast(batch.table[field.name].combine_chunks(),
                             field.type))
    elif batch.constants.get(field.name) is None:
      columns.append(pa.nulls(rows, field.type))
    else:
      columns.append(_repeat(batch.constants[field.name], text_field.type,
                             field.type, rows))
  return pa.Table.from_arrays(columns, schema=schema)


def to_arrow(elements: list, table: schemas.Table) -> pa.Table:
  """Row dicts and RowBatches of `table` -> one Arrow table of its schema."""
  schema = arrow_schema(table)
  parts = [_from_batch(element, table, schema) for element in elements
           if isinstance(element, json_lines.RowBatch)]
  rows = [element for element in elements if isinstance(element, dict)]
  if rows or not parts:
    parts.append(_from_rows(rows, table, schema))
  return pa.concat_tables(parts)
