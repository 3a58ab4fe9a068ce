"""Builds the torch.nn.Sequential a Distill4J model spec (docs/model-spec.md) describes, with the
same module order, so state_dict names match ("3.body.0.weight"). Shared by the bench scripts."""
import json

import torch.nn as nn


class Residual(nn.Module):
    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = nn.Sequential(*body)
        self.shortcut = nn.Sequential(*shortcut) if shortcut is not None else None

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def layer(d):
    t = d["type"]
    if t == "linear":
        return nn.Linear(d["in"], d["out"], bias=d.get("bias", True))
    if t == "conv2d":
        return nn.Conv2d(d["in"], d["out"], d["kernel"], d.get("stride", 1), d.get("padding", 0), bias=d.get("bias", True))
    if t == "batchnorm1d":
        return nn.BatchNorm1d(d["features"], eps=d.get("eps", 1e-5), momentum=d.get("momentum", 0.1))
    if t == "batchnorm2d":
        return nn.BatchNorm2d(d["features"], eps=d.get("eps", 1e-5), momentum=d.get("momentum", 0.1))
    if t == "relu":
        return nn.ReLU()
    if t == "leakyrelu":
        return nn.LeakyReLU(d.get("slope", 0.01))
    if t == "gelu":
        return nn.GELU(approximate=d.get("approximate", "none"))
    if t == "tanh":
        return nn.Tanh()
    if t == "sigmoid":
        return nn.Sigmoid()
    if t == "flatten":
        return nn.Flatten()
    if t == "identity":
        return nn.Identity()
    if t == "dropout":
        return nn.Dropout(d.get("p", 0.5))
    if t == "maxpool2d":
        return nn.MaxPool2d(d["kernel"], d.get("stride", d["kernel"]), d.get("padding", 0))
    if t == "avgpool2d":
        return nn.AvgPool2d(d["kernel"], d.get("stride", d["kernel"]), d.get("padding", 0))
    if t == "adaptiveavgpool2d":
        return nn.AdaptiveAvgPool2d(1)
    if t == "residual":
        return Residual([layer(x) for x in d["body"]], [layer(x) for x in d["shortcut"]] if "shortcut" in d else None)
    raise ValueError(f"unknown layer type {t}")


def build(path):
    """(model, input shape without the batch dimension)."""
    with open(path) as f:
        spec = json.load(f)
    return nn.Sequential(*[layer(d) for d in spec["layers"]]), tuple(spec["input"])
