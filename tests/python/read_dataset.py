"""Reads a Weir Parquet dataset the way a user's tools would, and prints what they see.

Usage: read_dataset.py '<json>' where the JSON names the dataset: {"path": "/lake/x"} on
local disk, or {"path": "s3://bucket/prefix", "endpoint": "http://127.0.0.1:port",
"key": "...", "secret": "..."} on an S3-compatible server.

Prints one JSON object:
  pyarrow          the dataset read whole with its schema from _common_metadata and hive
                   partitioning (how Weir's README says to read it): schema and rows;
  pyarrow_default  ds.dataset(path) with nothing given, which must read without an error
                   (it takes the first file's schema): schema and row count;
  duckdb           read_parquet over the data files with union_by_name (an S3 dataset is
                   copied to a local folder first: DuckDB's S3 support is a download the
                   test machine cannot make): schema and rows.
Rows are lists of values in schema order, sorted by their text, nulls as None.
"""

import json
import os
import sys
import tempfile

import duckdb
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def rows_of(table):
    out = [[None if v is None else str(v) for v in r.values()] for r in table.to_pylist()]
    return sorted(out, key=lambda r: json.dumps(r))


def schema_of(schema):
    return [[f.name, str(f.type)] for f in schema]


def main():
    spec = json.loads(sys.argv[1])
    path = spec["path"]
    if path.startswith("s3://"):
        endpoint = spec["endpoint"]
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint.split("://", 1)[1],
            scheme=endpoint.split("://", 1)[0],
            access_key=spec["key"],
            secret_key=spec["secret"],
            region="us-east-1",
        )
        root = path[len("s3://"):].rstrip("/")
    else:
        fs = pafs.LocalFileSystem()
        root = os.path.abspath(path)

    schema = pq.read_schema(root + "/_common_metadata", filesystem=fs)
    whole = ds.dataset(root, format="parquet", filesystem=fs, schema=schema, partitioning="hive").to_table()
    default = ds.dataset(root, format="parquet", filesystem=fs).to_table()
    out = {
        "pyarrow": {"schema": schema_of(whole.schema), "rows": rows_of(whole)},
        "pyarrow_default": {"schema": schema_of(default.schema), "rows": default.num_rows},
    }

    with tempfile.TemporaryDirectory() as tmp:
        local = root
        if path.startswith("s3://"):
            local = os.path.join(tmp, "copy")
            pafs.copy_files(root, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        files = []
        for dirpath, dirnames, names in os.walk(local):
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]
            files += [os.path.join(dirpath, n) for n in names if n.endswith(".parquet")]
        if files:
            rel = duckdb.sql(
                "SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = true)",
                params={"files": sorted(files)},
            )
            out["duckdb"] = {
                "schema": [[n, str(t)] for n, t in zip(rel.columns, rel.types)],
                "rows": rows_of(rel.to_arrow_table()),
            }
        else:
            out["duckdb"] = {"schema": [], "rows": []}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
