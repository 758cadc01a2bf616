"""dlt's rest_api source pulling the API benchmark's pages into Parquet: the tool a user
would pick instead of Weir's `collect`. Prints its figures as one JSON line; the CPU and
memory of importing dlt are left out (measured from just before the pipeline runs).

    python dlt_rest_api.py BASE_URL OUT_DIR WORK_DIR
"""
import json
import os
import resource
import sys
import time

os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
import dlt  # noqa: E402
from dlt.sources.rest_api import rest_api_source  # noqa: E402


def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main():
    base, out, work = sys.argv[1:4]
    cpu0, t0 = cpu(), time.time()
    source = rest_api_source({
        "client": {"base_url": base, "paginator": {"type": "json_link", "next_url_path": "next"}},
        # Nested objects stay JSON, as Weir keeps them.
        "resources": [{"name": "items", "max_table_nesting": 0,
                       "endpoint": {"path": "p/1.json", "data_selector": "data"}}],
    })
    pipeline = dlt.pipeline(pipeline_name="weir_bench", pipelines_dir=work, dataset_name="bench",
                            destination=dlt.destinations.filesystem(bucket_url="file://" + out))
    pipeline.run(source, loader_file_format="parquet")
    wall = time.time() - t0
    rows = pipeline.last_trace.last_normalize_info.row_counts.get("items", 0)
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall_seconds": wall, "cpu_seconds": cpu() - cpu0, "rows": rows,
                      "peak_rss_mb": max(s.ru_maxrss, c.ru_maxrss) / 1024}))


if __name__ == "__main__":
    main()
