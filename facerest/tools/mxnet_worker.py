"""Runs INSIDE the MXNet virtualenv (mxnet 1.9.1, numpy<1.24, onnx): export one checkpoint to ONNX.

Imports only what that environment has (never facerest). Called by facerest.tools.mxnet_convert as
`python mxnet_worker.py PREFIX EPOCH --shape 1,3,112,112 --onnx OUT.onnx --check OUT.npz`; prints
one JSON line describing what it did. The service side then repairs the graph and compares ONNX
Runtime's outputs with the MXNet outputs saved in the .npz.
"""

from __future__ import annotations

import argparse
import json
import sys

import mxnet as mx
import numpy as np

#: images the reference outputs are computed on: 2, so a batch dimension fixed to 1 would show
CHECK_BATCH = 2


def fixed_gamma_names(symbol: mx.sym.Symbol) -> list[str]:
    """Gamma parameters of BatchNorm nodes with fix_gamma (MXNet's default): MXNet ignores them.

    The ONNX exporter copies the stored gamma instead of 1, so a checkpoint whose gamma drifted
    from 1 during training (InsightFace's fc1 and genderage models) converts wrongly.
    """
    graph = json.loads(symbol.tojson())
    nodes = graph["nodes"]
    names = []
    for node in nodes:
        if node["op"] != "BatchNorm":
            continue
        attrs = node.get("attrs", node.get("attr", {})) or {}
        if str(attrs.get("fix_gamma", "True")).lower() in ("true", "1"):
            names.append(nodes[node["inputs"][1][0]]["name"])
    return names


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prefix")
    parser.add_argument("epoch", type=int)
    parser.add_argument("--shape", required=True, help="input shape N,C,H,W (N is made dynamic)")
    parser.add_argument("--onnx", required=True)
    parser.add_argument("--check", required=True, help=".npz to write a random input and MXNet's outputs to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))

    symbol, arg_params, aux_params = mx.model.load_checkpoint(args.prefix, args.epoch)
    fixed = [name for name in fixed_gamma_names(symbol) if name in arg_params]
    for name in fixed:
        arg_params[name] = mx.nd.ones_like(arg_params[name])

    params = {**arg_params, **aux_params}
    mx.onnx.export_model(
        symbol,
        params,
        in_shapes=[shape],
        in_types=[np.float32],
        onnx_file_path=args.onnx,
        dynamic=True,
        dynamic_input_shapes=[(None, *shape[1:])],
    )

    # reference outputs on random pixels (most of these graphs normalise their own input)
    check_shape = (CHECK_BATCH, *shape[1:])
    data = np.random.default_rng(args.seed).uniform(0, 255, check_shape).astype(np.float32)
    module = mx.mod.Module(symbol, data_names=["data"], label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", check_shape)], for_training=False)
    module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
    module.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
    outputs = [o.asnumpy() for o in module.get_outputs()]
    np.savez(args.check, input=data, **{f"output_{i}": o for i, o in enumerate(outputs)})

    report = {
        "mxnet": mx.__version__,
        "outputs": symbol.list_outputs(),
        "fixed_gamma": fixed,
        "input_shape": list(shape),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
