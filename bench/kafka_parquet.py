"""The baseline a user would write instead of Weir's stream manager: a confluent-kafka
consumer reading a topic to its end, 100,000 JSON records at a time into a zstd Parquet
file with pyarrow, offsets committed after each file. Prints its figures as JSON.

    python kafka_parquet.py <brokers> <topic> <out dir>
"""

import json
import os
import resource
import sys
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

BATCH = 100_000
# Like Weir's `until: now`: the end once every partition reported it and a second passed
# without a record (tansu reports ends early).
QUIET = 1.0


def main() -> None:
    brokers, topic, out = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(out, exist_ok=True)
    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"bench-py-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    t0 = time.time()
    rows, eof, files, records, nbytes, last = [], set(), 0, 0, 0, time.time()

    def write() -> None:
        nonlocal rows, files
        if rows:
            pq.write_table(pa.Table.from_pylist(rows), f"{out}/part-{files:05}.parquet", compression="zstd")
            c.commit(asynchronous=False)
            files += 1
            rows = []

    while True:
        msgs = c.consume(10_000, timeout=0.2)
        for m in msgs:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                    continue
                raise RuntimeError(m.error())
            eof.discard(m.partition())
            last = time.time()
            v = m.value()
            nbytes += len(v)
            records += 1
            rows.append(json.loads(v))
        if len(rows) >= BATCH:
            write()
        if not msgs and len(eof) == len(parts) and time.time() - last >= QUIET:
            break
    write()
    c.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "records": records,
                "bytes": nbytes,
                "files": files,
                "seconds": time.time() - t0,
                "cpu_seconds": ru.ru_utime + ru.ru_stime,
                "peak_rss_mb": ru.ru_maxrss / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
