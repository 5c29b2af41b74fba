"""parsers/ops/movement.py: data-movement ops, one node each against onnxruntime (the batch axis
moved, sliced around and broadcast)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import parsers
from tests.parsers.ops.node_check import check_node, sample, save_node
from verifier.errors import UnsupportedOperator

COVERED = {"Identity", "Dropout", "Cast", "Shape", "Size", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Gather",
           "Slice", "Split", "Concat", "Expand", "Tile", "ReverseSequence"}
I64 = np.int64


def ints(*values: int) -> np.ndarray:
    return np.array(values, I64)


def test_identity(tmp_path):
    check_node(tmp_path, helper.make_node("Identity", ["x"], ["y"]), {"x": sample(3, 4)})


@pytest.mark.parametrize("opset, extra", [(11, {"ratio": 0.3}), (13, {}), (17, {"seed": 3})])
def test_dropout_in_inference_is_the_identity(opset, extra, tmp_path):
    inputs = ["x", "r", "train"] if opset >= 12 else ["x"]
    constants = {"r": np.array(0.3, np.float32), "train": np.array(False)} if opset >= 12 else None
    check_node(tmp_path, helper.make_node("Dropout", inputs, ["y"], **extra), {"x": sample(3, 4)}, constants, opset=opset)


def test_dropout_in_training_mode_is_refused(tmp_path):
    node = helper.make_node("Dropout", ["x", "r", "train"], ["y"], name="drop")
    path = save_node(tmp_path, node, {"x": sample(3, 4)}, {"r": np.array(0.3, np.float32), "train": np.array(True)})
    with pytest.raises(UnsupportedOperator, match="Dropout .*'drop'.*training_mode"):
        parsers.load_onnx(path)


def test_cast_between_floats(tmp_path):
    check_node(tmp_path, helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE), {"x": sample(3, 4)})


def test_cast_of_a_perturbed_value_to_integers_is_refused(tmp_path):
    path = save_node(tmp_path, helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64, name="to_int"), {"x": sample(3, 4)})
    with pytest.raises(UnsupportedOperator, match="Cast .*'to_int'.*non-float"):
        parsers.load_onnx(path)


@pytest.mark.parametrize("opset, attributes, prefix", [(17, {}, None), (17, {"start": 1}, -1), (17, {"start": -2, "end": 3}, -1)])
def test_shape_feeds_a_reshape(opset, attributes, prefix, tmp_path):
    """Shape of the input (batch 1 per sample) drives a Reshape back to the input's shape."""
    extra = [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("Shape", ["x"], ["dims"], **attributes)]
    if prefix is not None:
        extra.append(helper.make_node("Concat", ["lead", "dims"], ["target"], axis=0))
    node = helper.make_node("Reshape", ["flat", "target" if prefix is not None else "dims"], ["y"])
    check_node(tmp_path, node, {"x": sample(3, 4, 5)}, {"lead": ints(-1)} if prefix is not None else None,
               opset=opset, extra_nodes=tuple(extra))


def test_size_of_a_value_without_batch_axis(tmp_path):
    extra = (helper.make_node("Size", ["x"], ["count"]), helper.make_node("Cast", ["count"], ["scale"], to=TensorProto.FLOAT))
    check_node(tmp_path, helper.make_node("Mul", ["x", "scale"], ["y"]), {"x": sample(4, 5)},
               batch_axes={"x": None}, extra_nodes=extra)


def test_size_of_a_batched_value_is_refused(tmp_path):
    extra = (helper.make_node("Size", ["x"], ["count"], name="count"),
             helper.make_node("Cast", ["count"], ["scale"], to=TensorProto.FLOAT))
    path = save_node(tmp_path, helper.make_node("Mul", ["x", "scale"], ["y"]), {"x": sample(4, 5)}, extra_nodes=extra)
    with pytest.raises(UnsupportedOperator, match="Size .*'count'.*batch size"):
        parsers.load_onnx(path)


@pytest.mark.parametrize("perm", [None, [1, 0, 2], [2, 0, 1], [0, 2, 1]])
def test_transpose(perm, tmp_path):
    attributes = {} if perm is None else {"perm": perm}
    check_node(tmp_path, helper.make_node("Transpose", ["x"], ["y"], **attributes), {"x": sample(3, 4, 5)})


@pytest.mark.parametrize("target", [ints(0, -1), ints(-1, 2, 10), ints(0, 5, 4), ints(0, 2, 2, 5)])
def test_reshape(target, tmp_path):
    check_node(tmp_path, helper.make_node("Reshape", ["x", "shape"], ["y"]), {"x": sample(3, 4, 5)}, {"shape": target})


@pytest.mark.parametrize("shape, axis, batch_axis", [((3, 4, 5), 1, 0), ((3, 4, 5, 2), -3, 0), ((4, 5, 3), 2, 2)])
def test_flatten(shape, axis, batch_axis, tmp_path):
    check_node(tmp_path, helper.make_node("Flatten", ["x"], ["y"], axis=axis), {"x": sample(*shape)},
               batch_axes={"x": batch_axis})


@pytest.mark.parametrize("shape, axis, batch_axis", [((4, 3, 5), 2, 1), ((3, 4, 5), 2, 0)])
def test_flatten_merging_the_batch_axis_with_others_is_refused(shape, axis, batch_axis, tmp_path):
    """(4, N, 5) or (N, 4, 5) flattened at axis 2 merges samples with another axis: the result is not
    one slice per sample on an axis of its own."""
    path = save_node(tmp_path, helper.make_node("Flatten", ["x"], ["y"], axis=axis, name="flat"), {"x": sample(*shape)},
                     batch_axes={"x": batch_axis})
    with pytest.raises(UnsupportedOperator, match="Flatten .*'flat'.*mixes samples"):
        parsers.load_onnx(path, batch_axes={"x": batch_axis})


@pytest.mark.parametrize("opset, axes", [(11, [2]), (13, [2]), (13, None), (11, None)])
def test_squeeze(opset, axes, tmp_path):
    x = {"x": sample(3, 4, 1, 5, 1)}
    if opset < 13 or axes is None:
        attributes = {"axes": axes} if axes is not None and opset < 13 else {}
        check_node(tmp_path, helper.make_node("Squeeze", ["x"], ["y"], **attributes), x, opset=opset)
    else:
        check_node(tmp_path, helper.make_node("Squeeze", ["x", "axes"], ["y"]), x, {"axes": ints(*axes)}, opset=opset)


@pytest.mark.parametrize("opset, axes", [(11, [0]), (11, [1, -1]), (13, [0, 3])])
def test_unsqueeze(opset, axes, tmp_path):
    if opset < 13:
        check_node(tmp_path, helper.make_node("Unsqueeze", ["x"], ["y"], axes=axes), {"x": sample(3, 4)}, opset=opset)
    else:
        check_node(tmp_path, helper.make_node("Unsqueeze", ["x", "axes"], ["y"]), {"x": sample(3, 4)},
                   {"axes": ints(*axes)}, opset=opset)


@pytest.mark.parametrize("axis, indices", [(1, ints(2, 0, -1)), (2, np.array(1, I64)), (-1, ints(3, 3))])
def test_gather(axis, indices, tmp_path):
    check_node(tmp_path, helper.make_node("Gather", ["x", "i"], ["y"], axis=axis), {"x": sample(3, 5, 4)}, {"i": indices})


def test_gather_with_input_dependent_indices_is_refused(tmp_path):
    extra = (helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64, name="ids"),)
    path = save_node(tmp_path, helper.make_node("Gather", ["c", "i"], ["y"], name="lookup"), {"x": sample(3, 2, low=0, high=2)},
                     {"c": sample(4, 2)}, extra_nodes=extra)
    with pytest.raises(UnsupportedOperator, match="'ids'|'lookup'"):
        parsers.load_onnx(path)


@pytest.mark.parametrize("opset, starts, ends, axes, steps", [(9, [1], [4], [1], None), (13, [4, 0], [0, 3], [1, 2], [-2, 1]),
                                                              (13, [-3], [100], [-1], None)])
def test_slice(opset, starts, ends, axes, steps, tmp_path):
    x = {"x": sample(3, 5, 4)}
    if opset < 10:
        check_node(tmp_path, helper.make_node("Slice", ["x"], ["y"], starts=starts, ends=ends, axes=axes), x, opset=opset)
        return
    constants = {"s": ints(*starts), "e": ints(*ends), "a": ints(*axes)}
    names = ["x", "s", "e", "a"]
    if steps:
        constants["p"] = ints(*steps)
        names.append("p")
    check_node(tmp_path, helper.make_node("Slice", names, ["y"]), x, constants, opset=opset)


@pytest.mark.parametrize("opset, attributes, split", [(11, {"axis": 1, "split": [2, 3]}, None), (13, {"axis": 2}, ints(1, 3)),
                                                      (18, {"axis": 1, "num_outputs": 2}, None)])
def test_split(opset, attributes, split, tmp_path):
    names = ["x", "split"] if split is not None else ["x"]
    check_node(tmp_path, helper.make_node("Split", names, ["a", "b"], **attributes), {"x": sample(3, 5, 4)},
               {"split": split} if split is not None else None, opset=opset)


def test_concat_of_inputs_and_constants(tmp_path):
    check_node(tmp_path, helper.make_node("Concat", ["x", "c", "y"], ["z"], axis=-1),
               {"x": sample(3, 4, 2), "y": sample(3, 4, 3, seed=1)}, {"c": sample(3, 4, 1, seed=2)},
               batch_axes={"x": None, "y": None})


@pytest.mark.parametrize("target", [ints(1, 4, 5), ints(2, 1, 1, 5), ints(5)])
def test_expand(target, tmp_path):
    x = sample(3, 1, 5) if target.size != 1 else sample(3, 1)
    check_node(tmp_path, helper.make_node("Expand", ["x", "shape"], ["y"]), {"x": x}, {"shape": target})


def test_tile(tmp_path):
    check_node(tmp_path, helper.make_node("Tile", ["x", "r"], ["y"]), {"x": sample(3, 2, 4)}, {"r": ints(1, 3, 2)})


def test_tile_along_the_batch_axis_is_refused(tmp_path):
    path = save_node(tmp_path, helper.make_node("Tile", ["x", "r"], ["y"], name="tiles"), {"x": sample(3, 2)}, {"r": ints(2, 1)})
    with pytest.raises(UnsupportedOperator, match="Tile .*'tiles'.*batch axis"):
        parsers.load_onnx(path)


@pytest.mark.parametrize("time_axis, batch_axis", [(0, 1), (1, 0)])
def test_reverse_sequence(time_axis, batch_axis, tmp_path):
    x = sample(5, 3, 4) if time_axis == 0 else sample(3, 5, 4)
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], time_axis=time_axis, batch_axis=batch_axis)
    check_node(tmp_path, node, {"x": x}, {"lens": ints(4, 4, 4)}, batch_axes={"x": batch_axis})


def test_reverse_sequence_with_lengths_differing_per_sample_is_refused(tmp_path):
    node = helper.make_node("ReverseSequence", ["x", "lens"], ["y"], time_axis=0, batch_axis=1, name="rev")
    path = save_node(tmp_path, node, {"x": sample(5, 3, 4)}, {"lens": ints(4, 2, 5)}, batch_axes={"x": 1})
    with pytest.raises(UnsupportedOperator, match="ReverseSequence .*'rev'"):
        parsers.load_onnx(path, batch_axes={"x": 1})


def test_gru_with_a_dropout_node_is_certified_soundly(tmp_path):
    """An inference Dropout (as some exporters leave it) between the pooled GRU state and the head:
    certified, with onnxruntime's outputs at sampled points inside the bounds."""
    import onnx
    from onnx import numpy_helper

    from tests.parsers.ops.test_reduce import GruMeanPool, certified_and_sound, export

    path = export(GruMeanPool(), tmp_path / "gru.onnx", 17)
    model = onnx.load(str(path))
    head = next(n for n in model.graph.node if n.op_type == "Gemm")
    pooled = head.input[0]
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
                                    numpy_helper.from_array(np.array(False), "training")])
    model.graph.node.insert(list(model.graph.node).index(head),
                            helper.make_node("Dropout", [pooled, "ratio", "training"], ["dropped"], name="drop"))
    head.input[0] = "dropped"
    onnx.save(model, str(tmp_path / "gru_dropout.onnx"))
    x = np.random.default_rng(5).uniform(-1, 1, (2, 4, 3)).astype(np.float32)
    certified_and_sound(tmp_path / "gru_dropout.onnx", x)


@pytest.mark.parametrize("batch_name", ["N", "unk__1"])
def test_an_output_after_batch_and_time_were_merged_keeps_its_declared_batch_axis(batch_name, tmp_path):
    """tf.keras writes Dense on a 3-D input as Reshape(-1, F) -> MatMul -> Reshape(-1, T*H): batch and
    time merged, then split. Each sample's IR is exact; the output's batch axis comes from the file's
    declaration (tf2onnx names it differently from the input's), so batches evaluate and bound row by row."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    import verifier
    steps, features, hidden, classes = 5, 4, 2, 3
    rng = np.random.default_rng(0)
    constants = [numpy_helper.from_array(np.array([-1, features], np.int64), "merge"),
                 numpy_helper.from_array(rng.normal(size=(features, hidden)).astype(np.float32), "w1"),
                 numpy_helper.from_array(np.array([-1, steps * hidden], np.int64), "split"),
                 numpy_helper.from_array(rng.normal(size=(steps * hidden, classes)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Reshape", ["x", "merge"], ["rows"]), helper.make_node("MatMul", ["rows", "w1"], ["m"]),
             helper.make_node("Tanh", ["m"], ["a"]), helper.make_node("Reshape", ["a", "split"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "merged", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, features])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_name, classes])], constants)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "merged.onnx")
    loaded = parsers.load_onnx(tmp_path / "merged.onnx")
    x = rng.uniform(-1, 1, (3, steps, features)).astype(np.float32)
    expected = ort.InferenceSession(str(tmp_path / "merged.onnx")).run(None, {"x": x})[0]
    assert np.abs(verifier.evaluate(loaded, x)[0] - expected).max() <= 1e-5
    lower, upper = verifier.bound_outputs(loaded, x, eps=0.3, norm=2, ball="sequence")
    assert lower.shape == upper.shape == (3, classes)
    for k in range(3):
        alone = verifier.bound_outputs(loaded, x[k:k + 1], eps=0.3, norm=2, ball="sequence")
        np.testing.assert_allclose(np.stack(alone)[:, 0], np.stack([lower[k], upper[k]]), rtol=1e-12, atol=1e-12)
