"""dlib's ResNet face recognizer (`dlib_face_recognition_resnet_model_v1.dat`) -> ONNX.

dlib keeps its networks in its own serialisation format and nobody publishes an ONNX export of
them. The network's layout is fixed by its C++ type (`anet_type` of dlib's
`tools/python/src/face_recognition.cpp`: a 29-layer ResNet on 150x150 RGB chips, 128-d output),
so the file is read here by walking that type: each layer's parameters where dlib's
`serialize()` wrote them. The graph built from them does what dlib does, layer by layer:

- `con` is ONNX Conv (same weight layout, OIHW); each `affine` (a batch norm frozen into a scale and
  a shift, or stored as the batch norm itself, `bn_con2`, which dlib converts on load) is folded
  into the convolution before it;
- `add_prev` adds two tensors of different shapes as dlib's `tt::add` does: the smaller one is
  zero-padded at the end of each axis (channels, then bottom and right). The down-sampling blocks
  rely on this twice: 32 -> 64 channels, and a 3x3 block output added to a 4x4 pooled input;
- `avg_pool_everything` is GlobalAveragePool and `fc_no_bias` a MatMul.

The input is the chip minus dlib's mean colour, divided by 256 (`input_rgb_image_sized`), in RGB:
that is the catalogue entry's preprocessing, the mean read from the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from facerest.errors import ModelError

#: the chip side the network was trained on (input_rgb_image_sized<150>)
CHIP_SIZE = 150
OPSET = 17


class DlibFormatError(ModelError):
    code = "conversion_failed"


class _Reader:
    """dlib's serialize.h primitives over a byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError("the dlib file ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        """A packed integer: a control byte (low 4 bits: length, 0x80: negative), then the
        magnitude little-endian."""
        control = self._take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8:
            raise DlibFormatError(f"bad integer at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        """A float_details: mantissa and exponent, value = mantissa * 2**exponent."""
        mantissa, exponent = self.int(), self.int()
        specials = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}
        return specials[exponent] if exponent in specials else float(np.ldexp(float(mantissa), exponent))

    def bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool at byte {self.pos - 1}")
        return ch == b"1"

    def string(self) -> str:
        return self._take(self.int()).decode("latin-1")

    def expect(self, *names: str) -> str:
        found = self.string()
        if found not in names:
            raise DlibFormatError(f"expected {' or '.join(names)} at byte {self.pos}, found {found!r}")
        return found

    def tensor(self) -> np.ndarray:
        """A resizable_tensor: version 2, (n, k, nr, nc), then raw little-endian float32."""
        if self.int() != 2:
            raise DlibFormatError("unknown tensor version")
        shape = tuple(self.int() for _ in range(4))
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count), "<f4").reshape(shape).astype(np.float32)

    def alias(self) -> tuple[int, int, int, int]:
        """An alias_tensor: version 1, then its (n, k, nr, nc) within a parameter tensor."""
        if self.int() != 1:
            raise DlibFormatError("unknown alias_tensor version")
        n, k, nr, nc = (self.int() for _ in range(4))
        return n, k, nr, nc


@dataclass(slots=True)
class Layer:
    """One computational layer of the network, bottom (input side) first."""

    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, tag, skip, fc
    arg: int = 0  # tag / skip / add_prev: the tag id
    params: dict[str, np.ndarray] = field(default_factory=dict)
    window: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


def _block() -> list[str]:
    """dlib's `block` (top first): BN<con<N,3,3,1,1,relu<BN<con<N,3,3,s,s,SUBNET>>>>> (the stride
    s, 1 or 2, is read from the file with the convolution)."""
    return ["affine", "con", "relu", "affine", "con"]


def _ares() -> list[str]:
    # relu<add_prev1<block<N,BN,1,tag1<SUBNET>>>>
    return ["relu", "add_prev:1", *_block(), "tag:1"]


def _ares_down() -> list[str]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,BN,2,tag1<SUBNET>>>>>>>
    return ["relu", "add_prev:2", "avg_pool", "skip:1", "tag:2", *_block(), "tag:1"]


def anet_layout() -> list[str]:
    """The layers of dlib's face recognition `anet_type` below its loss, top (output) first."""
    layout = ["fc", "avg_pool"]
    layout += _ares_down()  # alevel0
    layout += _ares() + _ares() + _ares_down()  # alevel1, 256 filters
    layout += _ares() + _ares() + _ares_down()  # alevel2, 128
    layout += _ares() + _ares() + _ares() + _ares_down()  # alevel3, 64
    layout += _ares() + _ares() + _ares()  # alevel4, 32
    layout += ["max_pool", "relu", "affine", "con"]  # the stem; con sits on the input layer
    return layout


def _details(reader: _Reader, kind: str) -> Layer:
    """One layer's own serialised details (the part after its sub-network)."""
    name, _, arg = kind.partition(":")
    layer = Layer(name, int(arg or 0))
    if name == "con":
        version = reader.expect("con_4", "con_5", "con_6")
        params = reader.tensor().reshape(-1)
        reader.int()  # num_filters
        window = (reader.int(), reader.int())
        layer.stride = (reader.int(), reader.int())
        layer.padding = (reader.int(), reader.int())
        filters, biases = reader.alias(), reader.alias()
        for _ in range(4):  # learning rate and weight decay multipliers
            reader.float()
        use_bias = reader.bool() if version in ("con_5", "con_6") else True
        if version == "con_6" and reader.bool():
            raise DlibFormatError("a convolution with a fused relu (con_6 use_relu) is not supported")
        layer.window = window
        n_filters = int(np.prod(filters))
        layer.params["weight"] = params[:n_filters].reshape(filters)
        bias = params[n_filters : n_filters + int(np.prod(biases))].reshape(-1) if use_bias else None
        layer.params["bias"] = bias if bias is not None else np.zeros(filters[0], np.float32)
        return layer
    if name == "affine":
        version = reader.expect("affine_", "affine_2", "bn_con2")
        if version == "bn_con2":
            params = reader.tensor().reshape(-1)
            gamma_shape, beta_shape = reader.alias(), reader.alias()
            reader.tensor(), reader.tensor()  # means, invstds of the last training batch
            means, variances = reader.tensor().reshape(-1), reader.tensor().reshape(-1)
            reader.int(), reader.int()  # num_updates, running_stats_window_size
            for _ in range(4):
                reader.float()
            eps = reader.float()
            k = int(np.prod(gamma_shape))
            gamma, beta = params[:k], params[k : k + int(np.prod(beta_shape))]
            scale = gamma / np.sqrt(variances + eps)
            layer.params["scale"], layer.params["shift"] = scale, beta - scale * means
        else:
            params = reader.tensor().reshape(-1)
            gamma_shape, beta_shape = reader.alias(), reader.alias()
            reader.int()  # mode (conv or fc)
            if version == "affine_2":
                reader.bool()  # disabled
            k = int(np.prod(gamma_shape))
            layer.params["scale"] = params[:k].copy()
            layer.params["shift"] = params[k : k + int(np.prod(beta_shape))].copy()
        return layer
    if name == "relu":
        if reader.expect("relu_", "relu_2") == "relu_2":
            reader.bool()
        return layer
    if name in ("max_pool", "avg_pool"):
        reader.expect(f"{name}_2")
        layer.window = (reader.int(), reader.int())
        layer.stride = (reader.int(), reader.int())
        layer.padding = (reader.int(), reader.int())
        return layer
    if name == "add_prev":
        reader.expect("add_prev_")
        return layer
    if name == "fc":
        version = reader.expect("fc_2", "fc_3")
        outputs, inputs = reader.int(), reader.int()
        params = reader.tensor().reshape(-1)
        reader.alias(), reader.alias()
        bias_mode = reader.int()
        for _ in range(4):
            reader.float()
        if version == "fc_3":
            reader.bool()
        layer.params["weight"] = params[: inputs * outputs].reshape(inputs, outputs)
        if bias_mode == 0:  # FC_HAS_BIAS
            layer.params["bias"] = params[inputs * outputs : inputs * outputs + outputs]
        return layer
    raise DlibFormatError(f"no reader for a {kind} layer")


def _layer_tail(reader: _Reader, version: int) -> None:
    """What add_layer writes after a layer's details: three flags and its work tensors."""
    for _ in range(3):
        reader.bool()
    reader.tensor(), reader.tensor()  # x_grad, cached_output
    if version == 2:
        reader.tensor()  # params_grad


@dataclass(slots=True)
class DlibNet:
    layers: list[Layer]  # bottom first
    mean_rgb: tuple[float, float, float]
    chip_size: int


def read_dlib_resnet(path: Path) -> DlibNet:
    """The layers of `dlib_face_recognition_resnet_model_v1.dat`, in order from the input."""
    reader = _Reader(path.read_bytes())
    if reader.int() != 1:
        raise DlibFormatError(f"{path} does not start with dlib's add_loss_layer")
    if reader.expect("loss_metric_", "loss_metric_2") == "loss_metric_2":
        reader.float(), reader.float()  # margin, distance threshold (training only)
    layout = anet_layout()
    # the headers (versions) of every layer, outermost first; the bottom layer's comes just below
    versions = [reader.int() for _ in layout[:-1]]
    # the bottom layer: add_layer<con, input_rgb_image_sized<150>> (version 2 or 3)
    bottom_version = reader.int()
    reader.expect("input_rgb_image_sized")
    mean = (reader.float(), reader.float(), reader.float())
    size = (reader.int(), reader.int())
    if size != (CHIP_SIZE, CHIP_SIZE):
        raise DlibFormatError(f"{path}: the network takes {size} chips, not {CHIP_SIZE}x{CHIP_SIZE}")
    bottom = _details(reader, layout[-1])
    for _ in range(3):
        reader.bool()
    reader.tensor(), reader.tensor(), reader.tensor()  # x_grad, cached_output, grad_final
    if bottom_version >= 3:
        reader.int()  # sample expansion factor
    layers = [bottom]
    for kind, version in zip(reversed(layout[:-1]), reversed(versions), strict=True):
        name = kind.partition(":")[0]
        if name in ("tag", "skip"):  # add_tag_layer / add_skip_layer: only their version
            layers.append(Layer(name, int(kind.partition(":")[2])))
            continue
        layers.append(_details(reader, kind))
        _layer_tail(reader, version)
    if reader.pos != len(reader.data):
        raise DlibFormatError(f"{path}: {len(reader.data) - reader.pos} bytes left after the network")
    return DlibNet(layers, (float(mean[0]), float(mean[1]), float(mean[2])), CHIP_SIZE)


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count}"

    def const(self, prefix: str, value: np.ndarray) -> str:
        name = self.name(prefix)
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _pool_out(side: int, window: int, stride: int, pad: int) -> int:
    return 1 + (side + 2 * pad - window) // stride


def _pad_to(b: _Builder, value: str, shape: tuple[int, int, int], target: tuple[int, int, int]) -> str:
    """Zero-pad (C, H, W) at the end of each axis up to `target`, as dlib's tt::add reads it."""
    if shape == target:
        return value
    ends = [0, *(t - s for s, t in zip(shape, target, strict=True))]
    pads = b.const("pads", np.array([0, 0, 0, 0, *ends], np.int64))
    return b.node("Pad", [value, pads])


def to_onnx(net: DlibNet) -> onnx.ModelProto:
    """The network as an ONNX graph: input `data` (N, 3, 150, 150) float, output `embedding` (N, 128)."""
    b = _Builder()
    current, shape = "data", (3, net.chip_size, net.chip_size)
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    last_conv: onnx.NodeProto | None = None
    conv_weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for layer in net.layers:
        kind = layer.kind
        if kind == "tag":
            tags[layer.arg] = (current, shape)
        elif kind == "skip":
            current, shape = tags[layer.arg]
        elif kind == "con":
            weight, bias = layer.params["weight"], layer.params["bias"]
            if bias.size == 0:
                bias = np.zeros(weight.shape[0], np.float32)
            current = b.node(
                "Conv",
                [current, "", ""],  # the weights are filled in once a following affine is folded
                kernel_shape=list(weight.shape[2:]),
                strides=list(layer.stride),
                pads=[layer.padding[0], layer.padding[1], layer.padding[0], layer.padding[1]],
            )
            last_conv = b.nodes[-1]
            conv_weights[current] = (weight, bias)
            shape = (
                weight.shape[0],
                _pool_out(shape[1], weight.shape[2], layer.stride[0], layer.padding[0]),
                _pool_out(shape[2], weight.shape[3], layer.stride[1], layer.padding[1]),
            )
        elif kind == "affine":
            if last_conv is None or last_conv.output[0] != current:
                raise DlibFormatError("an affine layer that does not follow a convolution")
            weight, bias = conv_weights[current]
            scale, shift = layer.params["scale"].reshape(-1), layer.params["shift"].reshape(-1)
            conv_weights[current] = (weight * scale[:, None, None, None], bias * scale + shift)
        elif kind == "relu":
            current = b.node("Relu", [current])
        elif kind in ("max_pool", "avg_pool"):
            if layer.window == (0, 0):  # avg_pool_everything
                current = b.node("GlobalAveragePool", [current])
                shape = (shape[0], 1, 1)
                continue
            op = "MaxPool" if kind == "max_pool" else "AveragePool"
            pad_y, pad_x = layer.padding
            current = b.node(
                op,
                [current],
                kernel_shape=list(layer.window),
                strides=list(layer.stride),
                pads=[pad_y, pad_x, pad_y, pad_x],
            )
            shape = (
                shape[0],
                _pool_out(shape[1], layer.window[0], layer.stride[0], pad_y),
                _pool_out(shape[2], layer.window[1], layer.stride[1], pad_x),
            )
        elif kind == "add_prev":
            other, other_shape = tags[layer.arg]
            target = tuple(max(a, c) for a, c in zip(shape, other_shape, strict=True))
            current = b.node(
                "Add",
                [_pad_to(b, current, shape, target), _pad_to(b, other, other_shape, target)],  # type: ignore[arg-type]
            )
            shape = target  # type: ignore[assignment]
        elif kind == "fc":
            flat = b.node("Flatten", [current], axis=1)
            current = b.node("MatMul", [flat, b.const("fc_weight", layer.params["weight"])])
            if "bias" in layer.params:
                current = b.node("Add", [current, b.const("fc_bias", layer.params["bias"])])
        else:
            raise DlibFormatError(f"no ONNX translation for a {kind} layer")
    for node in b.nodes:
        if node.op_type == "Conv":
            weight, bias = conv_weights[node.output[0]]
            node.input[1] = b.const("conv_weight", weight.astype(np.float32))
            node.input[2] = b.const("conv_bias", bias.astype(np.float32))
    b.nodes.append(helper.make_node("Identity", [current], ["embedding"], name="embedding"))
    graph = helper.make_graph(
        b.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [
            helper.make_tensor_value_info(
                "data", TensorProto.FLOAT, ["batch", 3, net.chip_size, net.chip_size]
            )
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 128])],
        initializer=b.weights,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="facerest.tools.dlib_convert",
        doc_string=(
            "dlib_face_recognition_resnet_model_v1 (Davis King, public domain) converted from dlib's "
            f"format; input: RGB chip minus mean {net.mean_rgb}, divided by 256"
        ),
    )
    model.ir_version = 8  # what every runtime facerest uses reads (ONNX Runtime, OpenVINO, TensorRT)
    onnx.checker.check_model(model)
    return model


def convert_dlib_resnet(source: Path, target: Path) -> None:
    """Write the ONNX form of dlib's face recognition network `source` to `target`."""
    from facerest.tools.onnx_tools import save

    save(to_onnx(read_dlib_resnet(source)), target)
