"""CSV → zstd Parquet with pyarrow or DuckDB, on one thread, for `weir-bench data`.

Usage: convert.py pyarrow|duckdb <input.csv> <output.parquet>
Prints one line: `seconds=<wall> cpu_seconds=<user+sys> peak_rss_mb=<max rss>`.
"""
import resource
import sys
import time


def main() -> None:
    tool, src, dst = sys.argv[1], sys.argv[2], sys.argv[3]
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if tool == "pyarrow":
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq

        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
        reader = pcsv.open_csv(src, read_options=pcsv.ReadOptions(use_threads=False, block_size=8 << 20))
        writer = None
        for batch in reader:
            if writer is None:
                writer = pq.ParquetWriter(dst, batch.schema, compression="zstd", compression_level=1)
            writer.write_batch(batch)
        if writer is not None:
            writer.close()
    elif tool == "duckdb":
        import duckdb

        con = duckdb.connect()
        con.execute("SET threads = 1")
        con.execute("SET preserve_insertion_order = true")
        con.execute(
            f"COPY (SELECT * FROM read_csv('{src}')) TO '{dst}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)"
        )
    else:
        raise SystemExit(f"unknown tool {tool!r}")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"seconds={wall:.3f} cpu_seconds={cpu:.3f} peak_rss_mb={after.ru_maxrss / 1024:.1f}")


if __name__ == "__main__":
    main()
