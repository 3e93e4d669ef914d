"""Detector backends on real models: the repo's own (ONNX and TFLite), YOLOX-Nano, and small
ONNX graphs built here to pin down each YOLO head layout's decoding through onnxruntime."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from agent.settings.modelcard import load_card, sha256_file
from agent.settings.yamlfile import ConfigError
from agent.vision.classes import ROAD_USER_CLASSES
from agent.vision.detect import ModelError, load_detector
from agent.vision.detect.base import iou_matrix, preprocess
from sim.render import SIM_CLASSES
from sim.traffic import random_training_frame
from tests.conftest import MOTORWAY, ROOT, SIMNET, YOLOX, need_shared

SIMNET_SSD = ROOT / "models" / "simnet_ssd.yaml"


def recall_on_sim_frames(card: Path, n: int = 40) -> tuple[float, float, float]:
    """Recall, class accuracy and precision of a detector on freshly rendered frames."""
    det = load_detector(card, set(SIM_CLASSES))
    rng = np.random.default_rng(123)
    found = total = right = false = 0
    for _ in range(n):
        img, labels = random_training_frame(rng)
        d = det.detect(img)
        # vehicles cut by the frame edge by more than half are not expected
        labels = [(c, b) for c, b in labels if (b[2] - b[0]) * (b[3] - b[1]) > 150]
        gt = np.array([b for _, b in labels], np.float32).reshape(-1, 4)
        iou = iou_matrix(gt, d.boxes)
        for i, (c, _) in enumerate(labels):
            total += 1
            if iou.shape[1] and iou[i].max() >= 0.5:
                found += 1
                right += ROAD_USER_CLASSES[d.labels[iou[i].argmax()]] == SIM_CLASSES[c]
        false += int((iou.max(0) < 0.3).sum()) if iou.shape[0] else len(d)
    return found / total, right / max(found, 1), 1 - false / max(found + false, 1)


@pytest.mark.parametrize("card", [SIMNET, SIMNET_SSD], ids=["onnxruntime", "tflite"])
def test_repo_model_detects_simulated_vehicles(card: Path) -> None:
    recall, class_acc, precision = recall_on_sim_frames(card)
    assert recall >= 0.9, recall
    assert class_acc >= 0.9, class_acc
    assert precision >= 0.9, precision


def test_both_backends_agree() -> None:
    rng = np.random.default_rng(5)
    a, b = load_detector(SIMNET), load_detector(SIMNET_SSD)
    for _ in range(5):
        img, _ = random_training_frame(rng)
        da, db = a.detect(img), b.detect(img)
        assert len(da) == len(db)
        if len(da):
            assert iou_matrix(da.boxes, db.boxes).max(1).min() > 0.95


def test_yolox_nano_finds_cars_on_real_footage() -> None:
    need_shared(MOTORWAY, ROOT.parent / "shared" / "models" / "yolox_nano.onnx")
    det = load_detector(YOLOX)
    cap = cv2.VideoCapture(str(MOTORWAY))
    ok, frame = cap.read()
    cap.release()
    assert ok
    d = det.detect(frame)
    names = d.class_names()
    assert names.count("car") >= 4
    assert set(names) <= {"car", "motorbike", "bus", "truck", "bicycle"}  # no person by default
    assert (d.boxes[:, 2] <= 320).all() and (d.boxes[:, 3] <= 240).all()


def _card(tmp_path: Path, model: Path, fmt: str, nc: int, size: int, **out: object) -> Path:
    extra = "".join(f"\n  {k}: {v}" for k, v in out.items())
    text = f"""name: t
file: {model.name}
sha256: {sha256_file(model)}
backend: onnxruntime
input: {{size: [{size}, {size}], layout: NCHW}}
output:
  format: {fmt}{extra}
num_classes: {nc}
class_map: {{0: car, 1: motorbike}}
licence: test
source: test
"""
    p = tmp_path / f"{model.stem}.yaml"
    p.write_text(text)
    return p


def _const_model(path: Path, out: np.ndarray, size: int = 64) -> Path:
    """An ONNX model whose output is ``out`` (plus 0 x the input, so the input is used)."""
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])
    outp = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out.shape))
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["s"], keepdims=0),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Add", ["const", "z"], ["output"]),
    ]
    graph = helper.make_graph(nodes, "g", [inp], [outp], initializer=[
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("const", TensorProto.FLOAT, list(out.shape), out.ravel().tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


FRAME = np.zeros((64, 64, 3), np.uint8)  # same size as the input: no letterbox offset


def test_yolov5_head_decoding(tmp_path: Path) -> None:
    out = np.zeros((1, 3, 5 + 2), np.float32)
    out[0, 0] = [20, 30, 10, 12, 0.9, 0.1, 0.8]   # motorbike, score 0.72
    out[0, 1] = [21, 30, 10, 12, 0.9, 0.1, 0.6]   # duplicate: suppressed by NMS
    out[0, 2] = [50, 50, 8, 8, 0.2, 0.9, 0.1]     # score 0.18: below threshold
    card = _card(tmp_path, _const_model(tmp_path / "v5.onnx", out), "yolov5", 2, 64)
    d = load_detector(card, confidence=0.3).detect(FRAME)
    assert len(d) == 1 and d.class_names() == ["motorbike"]
    np.testing.assert_allclose(d.boxes[0], [15, 24, 25, 36], atol=1e-4)
    assert d.scores[0] == pytest.approx(0.72, abs=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_yolov8_head_decoding(tmp_path: Path, transposed: bool) -> None:
    out = np.zeros((1, 4 + 2, 5), np.float32)
    out[0, :, 0] = [32, 32, 16, 20, 0.7, 0.1]      # car
    out[0, :, 1] = [10, 10, 6, 6, 0.05, 0.5]       # motorbike
    if transposed:
        out = out.transpose(0, 2, 1).copy()
    card = _card(tmp_path, _const_model(tmp_path / "v8.onnx", out), "yolov8", 2, 64)
    d = load_detector(card, confidence=0.3).detect(FRAME)
    got = sorted(zip(d.class_names(), d.boxes.round(3).tolist(), strict=True))
    assert got == [("car", [24.0, 22.0, 40.0, 42.0]), ("motorbike", [7.0, 7.0, 13.0, 13.0])]


def test_yolox_raw_grid_decoding(tmp_path: Path) -> None:
    # 64x64 input, strides 8/16/32: 64 + 16 + 4 anchors
    n = 64 + 16 + 4
    out = np.zeros((1, n, 5 + 2), np.float32)
    k = 64 + 5  # stride-16 grid, cell (x=1, y=1)
    out[0, k] = [0.5, 0.25, np.log(2.0), 0.0, 0.9, 0.95, 0.0]
    card = _card(tmp_path, _const_model(tmp_path / "yx.onnx", out), "yolox", 2, 64,
                 decoded="false", strides="[8, 16, 32]")
    d = load_detector(card, confidence=0.3).detect(FRAME)
    assert d.class_names() == ["car"]
    # centre ((1 + 0.5) * 16, (1 + 0.25) * 16) = (24, 20); w = 2 * 16, h = 1 * 16
    np.testing.assert_allclose(d.boxes[0], [8, 12, 40, 28], atol=1e-3)


def test_letterbox_maps_boxes_back_to_frame(tmp_path: Path) -> None:
    out = np.zeros((1, 1, 7), np.float32)
    out[0, 0] = [32, 32, 16, 16, 1, 1, 0]
    card = _card(tmp_path, _const_model(tmp_path / "lb.onnx", out), "yolov5", 2, 64)
    # a 128x64 frame letterboxes to scale 0.5 with 16 px of padding top and bottom
    d = load_detector(card).detect(np.zeros((64, 128, 3), np.uint8))
    np.testing.assert_allclose(d.boxes[0], [48, 16, 80, 48], atol=1e-3)


def test_card_checked_against_real_shapes(tmp_path: Path) -> None:
    out = np.zeros((1, 3, 7), np.float32)
    model = _const_model(tmp_path / "m.onnx", out)
    with pytest.raises(ModelError, match=r"input NCHW \[1, 3, 32, 32\].*\[1, 3, 64, 64\]"):
        load_detector(_card(tmp_path, model, "yolov5", 2, 32))
    with pytest.raises(ModelError, match=r"expects \[1, N, 8\].*\[1, 3, 7\]"):
        load_detector(_card_nc(tmp_path, model, 3))


def _card_nc(tmp_path: Path, model: Path, nc: int) -> Path:
    p = _card(tmp_path, model, "yolov5", 2, 64)
    p.write_text(p.read_text().replace("num_classes: 2", f"num_classes: {nc}"))
    return p


def test_missing_corrupt_or_altered_model_files(tmp_path: Path) -> None:
    shutil.copy(SIMNET, tmp_path / "simnet.yaml")
    with pytest.raises(ModelError, match=r"model file .*simnet.onnx not found"):
        load_card(tmp_path / "simnet.yaml")
    (tmp_path / "simnet.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"sha256 .* the card says"):
        load_card(tmp_path / "simnet.yaml")
    card = tmp_path / "simnet.yaml"
    card.write_text("\n".join(f"sha256: {sha256_file(tmp_path / 'simnet.onnx')}"
                              if ln.startswith("sha256:") else ln
                              for ln in SIMNET.read_text().splitlines()))
    with pytest.raises(ModelError, match=r"cannot load .* with onnxruntime"):
        load_detector(card)


def test_bad_card_is_a_located_error(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(SIMNET.read_text().replace("format: yolov8", "format: yolov9"))
    with pytest.raises(ConfigError) as ei:
        load_card(p)
    (prob,) = ei.value.problems
    assert prob.field == "output.format" and prob.line > 1 and "'yolov8'" in prob.message


def tiny_video(path: Path) -> Path:
    """Three black 64×48 frames: a video ``agent count`` accepts (it fails on the card)."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(3):
        out.write(np.zeros((48, 64, 3), np.uint8))
    out.release()
    return path


def test_card_contradictions_are_located_at_the_bad_entry(tmp_path: Path) -> None:
    """A class id beyond num_classes is reported at that id's line; uint8 input with a
    mean/std (which uint8 input never applies) at input.dtype; through ``agent count`` one
    located line and exit 3."""
    shutil.copy(SIMNET.with_suffix(".onnx"), tmp_path / "simnet.onnx")
    text = SIMNET.read_text()
    p = tmp_path / "ids.yaml"
    p.write_text(text.replace("class_map:\n", "class_map:\n  85: car\n"))
    with pytest.raises(ConfigError) as ei:
        load_card(p)
    (prob,) = ei.value.problems
    want_line = p.read_text().splitlines().index("  85: car") + 1
    assert prob.line == want_line and "class id 85 is outside 0..3" in prob.message, prob
    video = tiny_video(tmp_path / "v.avi")
    r = subprocess.run([sys.executable, "-m", "agent", "count", "--model", str(p), "--line",
                        "0,0,10,10", str(video)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 3 and len(lines) == 1 and lines[0].startswith(f"{p}:{want_line}:"), \
        r.stderr
    u = tmp_path / "u8.yaml"
    u.write_text(text.replace("dtype: float32", "dtype: uint8")
                 .replace("mean: [0, 0, 0]", "mean: [0.5, 0.5, 0.5]"))
    with pytest.raises(ConfigError) as ei:
        load_card(u)
    assert ei.value.problems[0].field == "input.dtype", ei.value.problems


@pytest.mark.parametrize("key, value", [("coords", "normalized"), ("decoded", "false"),
                                        ("reg_max", "5"), ("ssd_order", "[1, 0, 2, 3]"),
                                        ("center_offset", "0.5"), ("strides", "[8, 16]")])
def test_an_output_key_the_head_does_not_read_is_refused(tmp_path: Path, key: str,
                                                         value: str) -> None:
    """simnet's card is yolov8, which reads none of these: a card that sets one (e.g. an
    Ultralytics TFLite export's normalised boxes as `coords: normalized`) would be silently
    ignored and count wrong; it is a located error naming the heads that do read it."""
    shutil.copy(SIMNET.with_suffix(".onnx"), tmp_path / "simnet.onnx")
    text = SIMNET.read_text()
    assert "format: yolov8" in text
    p = tmp_path / "k.yaml"
    p.write_text(text.replace("  format: yolov8", f"  format: yolov8\n  {key}: {value}"))
    with pytest.raises(ConfigError) as ei:
        load_card(p)
    (prob,) = ei.value.problems
    assert f"format yolov8 does not read {key} (only" in prob.message, prob
    assert prob.field == "output", prob


def test_a_uint8_card_on_a_float_model_is_refused(tmp_path: Path) -> None:
    """The card says uint8 and the model takes float32: refused at load (before, the card's
    pre-processing was silently dropped)."""
    shutil.copy(SIMNET.with_suffix(".onnx"), tmp_path / "simnet.onnx")
    u = tmp_path / "u8.yaml"
    u.write_text(SIMNET.read_text().replace("dtype: float32", "dtype: uint8"))
    with pytest.raises(ModelError, match=r"card says input dtype uint8, model's input "
                                         r"'images' is float32"):
        load_detector(u)


def test_a_tflite_model_cut_in_half_is_refused_not_a_segfault(tmp_path: Path) -> None:
    """A .tflite cut in half (its card's sha256 updated to match) segfaults the TFLite
    runtime as it loads (in some runs only): the file's structure is checked first, so the
    load is a ModelError saying where it breaks, and ``agent count`` says so in one line,
    exit 3 (before: exit 139, nothing printed)."""
    card = tmp_path / "ssd.yaml"
    model = tmp_path / SIMNET_SSD.with_suffix(".tflite").name
    data = SIMNET_SSD.with_suffix(".tflite").read_bytes()
    model.write_bytes(data[:len(data) // 2])
    card.write_text("\n".join(f"sha256: {sha256_file(model)}" if ln.startswith("sha256:")
                              else ln for ln in SIMNET_SSD.read_text().splitlines()))
    with pytest.raises(ModelError, match=r"lies outside the 301842-byte file: truncated"):
        load_detector(card)
    video = tiny_video(tmp_path / "v.avi")
    r = subprocess.run([sys.executable, "-m", "agent", "count", "--model", str(card), "--line",
                        "0,0,10,10", str(video)], capture_output=True, text=True, cwd=ROOT,
                       timeout=300)
    assert r.returncode == 3 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "truncated or not a TFLite model; not opened" in r.stderr


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=512),
                 st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.integers(8, 10**6))))
def test_the_tflite_check_refuses_or_passes_never_crashes(case: bytes | tuple) -> None:
    """Random bytes, or the real model with one byte changed and cut anywhere: the check
    passes or raises BadFlatbuffer, nothing else (and never reads outside the file)."""
    import tempfile

    from agent.vision.detect.tflitecheck import BadFlatbuffer, check_tflite
    if isinstance(case, bytes):
        data = case
    else:
        data = bytearray(SIMNET_SSD.with_suffix(".tflite").read_bytes())
        at, value, cut = case
        data[at % len(data)] = value
        data = bytes(data[:cut])
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(data)
        f.flush()
        with contextlib.suppress(BadFlatbuffer):
            check_tflite(Path(f.name))


def _shared_tables_model(n_subgraphs: int, n_tensors: int) -> bytes:
    """A valid-looking TFLite flatbuffer whose ``n_subgraphs`` entries all point at one
    subgraph, whose ``n_tensors`` entries all point at one tensor: small on disk, but
    n_subgraphs × n_tensors tables to walk (a hostile reviewer's file)."""
    import struct
    mvt, model = 8, 20                            # model vtable, model table
    sgvec = model + 8
    svt = sgvec + 4 + 4 * n_subgraphs
    sg = svt + 8
    tvec = sg + 8
    tvt = tvec + 4 + 4 * n_tensors
    tensor = tvt + 4
    b = bytearray(tensor + 4)
    struct.pack_into("<I4s", b, 0, model, b"TFL3")
    struct.pack_into("<HHHHH", b, mvt, 10, 8, 0, 0, 4)         # field 2 (subgraphs) at +4
    struct.pack_into("<iI", b, model, model - mvt, sgvec - (model + 4))
    struct.pack_into("<I", b, sgvec, n_subgraphs)
    for k in range(n_subgraphs):
        struct.pack_into("<I", b, sgvec + 4 + 4 * k, sg - (sgvec + 4 + 4 * k))
    struct.pack_into("<HHH", b, svt, 6, 8, 4)                  # field 0 (tensors) at +4
    struct.pack_into("<iI", b, sg, sg - svt, tvec - (sg + 4))
    struct.pack_into("<I", b, tvec, n_tensors)
    for k in range(n_tensors):
        struct.pack_into("<I", b, tvec + 4 + 4 * k, tensor - (tvec + 4 + 4 * k))
    struct.pack_into("<HH", b, tvt, 4, 4)
    struct.pack_into("<i", b, tensor, tensor - tvt)
    return bytes(b)


def test_the_tflite_check_has_a_work_bound(tmp_path: Path) -> None:
    """A crafted file pointing many entries at shared tables (10^6 visits from 8 KB) is
    refused by the check's visit budget instead of occupying a core for minutes; the real
    model and the small crafted one pass."""
    from agent.vision.detect.tflitecheck import BadFlatbuffer, check_tflite
    small = tmp_path / "small.tflite"
    small.write_bytes(_shared_tables_model(2, 3))
    check_tflite(small)
    check_tflite(SIMNET_SSD.with_suffix(".tflite"))
    big = tmp_path / "big.tflite"
    big.write_bytes(_shared_tables_model(1000, 1000))
    with pytest.raises(BadFlatbuffer, match="more than 200000 tables"):
        check_tflite(big)


def test_preprocess_rejects_bad_frames() -> None:
    spec = load_card(SIMNET).input
    for bad in (None, np.zeros((10, 10), np.uint8), np.zeros((0, 10, 3), np.uint8)):
        with pytest.raises(ValueError, match="expected a HxWx3"):
            preprocess(bad, spec)  # type: ignore[arg-type]
    x, geo = preprocess(np.zeros((360, 640, 3), np.uint8), spec)
    assert x.shape == (1, 3, 320, 320) and geo.pad_y == 70


# --- one loaded model for the cameras that share a card ------------------------------------


def test_cameras_with_the_same_card_share_one_onnx_session(tmp_path: Path) -> None:
    from agent.vision.detect import SharedRuntimes

    shared = SharedRuntimes()
    a = load_detector(SIMNET, {"car"}, 0.3, shared=shared)
    b = load_detector(SIMNET, {"car", "bus"}, 0.6, shared=shared)
    assert a.runtime is b.runtime and len(shared) == 1
    # each keeps its own classes and thresholds, and both detect through the one session
    assert a.confidence == 0.3 and b.confidence == 0.6
    img, _ = random_training_frame(np.random.default_rng(5))
    assert len(a.detect(img).boxes) == len(load_detector(SIMNET, {"car"}, 0.3).detect(img).boxes)
    assert load_detector(SIMNET, {"car"}, threads=2, shared=shared).runtime is not a.runtime
    # an edited card (a copy elsewhere) loads anew; without ``shared`` nothing is shared
    card = tmp_path / "simnet.yaml"
    card.write_text(SIMNET.read_text().replace("file: ", f"file: {SIMNET.parent}/", 1))
    assert load_detector(card, shared=shared).runtime is not a.runtime
    assert load_detector(SIMNET).runtime is not a.runtime
    # held weakly: dropped with the last detector that used it
    del a, b
    import gc

    gc.collect()
    assert len(shared) == 0


def test_tflite_models_are_not_shared() -> None:
    from agent.vision.detect import SharedRuntimes

    card = ROOT / "models" / "simnet_ssd.yaml"
    shared = SharedRuntimes()
    a = load_detector(card, shared=shared)
    b = load_detector(card, shared=shared)
    assert a.runtime is not b.runtime and len(shared) == 0


@settings(max_examples=60, deadline=None)
@given(layout=st.sampled_from(["NCHW", "NHWC"]), channels=st.sampled_from(["BGR", "RGB"]),
       dtype=st.sampled_from(["float32", "uint8"]), resize=st.sampled_from(["letterbox",
                                                                            "stretch"]),
       norm=st.sampled_from([((0, 0, 0), (1, 1, 1)), ((0, 0, 0), (255, 255, 255)),
                             ((103.53, 116.28, 123.675), (57.375, 57.12, 58.395)),
                             ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
                             ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5))]),
       size=st.sampled_from([(64, 64), (96, 64), (48, 80)]),
       frames=st.lists(st.tuples(st.integers(8, 90), st.integers(8, 90)), min_size=1,
                       max_size=3),
       view=st.sampled_from(["whole", "mirrored", "every other row", "read-only"]),
       seed=st.integers(0, 2**16))
def test_the_fast_preprocessing_equals_the_plain_one_for_every_card(
        layout: str, channels: str, dtype: str, resize: str,
        norm: tuple[tuple[float, ...], tuple[float, ...]], size: tuple[int, int],
        frames: list[tuple[int, int]], view: str, seed: int) -> None:
    """Every input layout, channel order, dtype, resize and normalisation a card can name
    takes the fast path, and its tensors are preprocess()'s, frame after frame of changing
    sizes (whole, mirrored, strided or read-only views of the camera's buffer), each a new
    array."""
    from agent.settings.modelcard import InputSpec
    from agent.vision.detect.base import Letterbox

    mean, std = norm if dtype == "float32" else ((0, 0, 0), (1, 1, 1))
    spec = InputSpec(size=size, layout=layout, channels=channels, dtype=dtype, resize=resize,
                     mean=mean, std=std)
    fast = Letterbox(spec)
    rng = np.random.default_rng(seed)
    before = None
    for w, h in frames:
        frame = rng.integers(0, 256, (h * 2, w, 3), np.uint8)
        frame = {"whole": frame[:h], "mirrored": frame[:h, ::-1],
                 "every other row": frame[::2], "read-only": frame[:h]}[view]
        if view == "read-only":
            frame.flags.writeable = False
        got, geo = fast(frame)
        want, want_geo = preprocess(frame, spec)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
        assert geo == want_geo
        if before is not None:
            assert not np.shares_memory(got, before[0])
            np.testing.assert_array_equal(before[0], before[1])   # not overwritten
        before = (got, got.copy())


def test_the_preprocessing_bench_runs_in_its_short_mode() -> None:
    """bench/preprocess.py times every card layout against the YOLOX path in one run; here
    only that it runs and reports every card (its figures are the bench's, not a test's)."""
    import json

    r = subprocess.run([sys.executable, "bench/preprocess.py", "--frames", "5", "--repeats",
                        "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["bench"] == "preprocess" and len(summary["cards"]) == 8, summary
    assert all(c["fast_ms"] > 0 and c["plain_ms"] > 0 for c in summary["cards"].values())


@pytest.mark.parametrize("line, field", [("std: [1, 0, 1]", "input.std"),
                                         ("std: [1, 1e-9, 1]", "input.std"),
                                         ("std: [.nan, 1, 1]", "input.std"),
                                         ("mean: [0, .inf, 0]", "input.mean")])
def test_a_normalisation_that_cannot_be_applied_is_refused(tmp_path: Path, line: str,
                                                           field: str) -> None:
    """A std of 0 (or close enough to overflow its inverse) or a value that is not a
    number would make every pixel inf or NaN: a located error, not a model that never
    detects."""
    shutil.copy(SIMNET.with_suffix(".onnx"), tmp_path / "simnet.onnx")
    text = SIMNET.read_text()
    key = line.split(":")[0]
    lines = [ln for ln in text.splitlines() if ln.strip().startswith(f"{key}:")]
    assert len(lines) == 1, lines
    p = tmp_path / "n.yaml"
    p.write_text(text.replace(lines[0], lines[0][:len(lines[0]) - len(lines[0].lstrip())]
                              + line))
    with pytest.raises(ConfigError) as ei:
        load_card(p)
    assert ei.value.problems[0].field == field, ei.value.problems
