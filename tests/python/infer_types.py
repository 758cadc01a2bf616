"""Prints the column types pyarrow's CSV reader infers for each file named.

Usage: infer_types.py FILE... -> {"FILE": [["column", "type"], ...], ...}
pyarrow's defaults throughout (null markers, true/false values, block-wise inference).
"""

import json
import sys

import pyarrow.csv as pc

print(json.dumps({p: [[f.name, str(f.type)] for f in pc.read_csv(p).schema] for p in sys.argv[1:]}))
