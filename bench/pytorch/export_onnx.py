#!/usr/bin/env python3
"""Exports a Distill4J student to ONNX for the ONNX Runtime comparison (bench/run-predict.sh):
builds the spec's nn.Sequential (spec_model.py), loads the safetensors weights Distill4J wrote with
load_state_dict(strict=True), exports with a dynamic batch dimension, and checks ONNX Runtime's
output against PyTorch's on random input.

  python3 bench/pytorch/export_onnx.py --spec examples/mnist/student.json \\
      --weights runs/mnist/student-kd/model.safetensors --out runs/student.onnx
"""
import argparse
import os
import sys

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import spec_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model, shape = spec_model.build(args.spec)
    model.load_state_dict(load_file(args.weights), strict=True)
    model.eval()
    x = torch.rand((4,) + shape)
    torch.onnx.export(model, (x,), args.out, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}}, dynamo=False)
    try:
        import onnxruntime as ort
        got = ort.InferenceSession(args.out).run(None, {"x": x.numpy()})[0]
        with torch.no_grad():
            want = model(x).numpy()
        print(f"{args.out}: max |onnxruntime - torch| = {np.abs(got - want).max():.3g}")
    except ImportError:
        print(f"{args.out}: written (onnxruntime not installed: not checked)")


if __name__ == "__main__":
    main()
