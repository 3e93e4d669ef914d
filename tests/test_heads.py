"""Every head on every runtime, on models built here with a known answer.

Each model (``tests/head_specs.py``) is a real graph whose outputs on a black frame encode
known boxes and scores; it is built with ``onnx.helper`` for onnxruntime and converted by
TensorFlow's TFLite converter (float32, int8 and uint8, quantised input and outputs) for
tflite-runtime. The decode must find exactly the expected detections. Plus the real
YOLOX-Nano, decode-time errors (one line, exit 3) and ``--check-models`` catching wrong
cards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.settings.modelcard import sha256_file
from agent.vision.detect import ModelError, load_detector
from tests.conftest import ROOT, need_shared
from tests.head_specs import CLASSES, SIZE, Case, Output, cases, kernels

CASES = {c.name: c for c in cases()}
BLACK = np.zeros((SIZE, SIZE, 3), np.uint8)     # input-sized: no letterbox offset
YOLOX_ONNX = ROOT.parent / "shared" / "models" / "yolox_nano.onnx"


# --- building the models --------------------------------------------------------------------

def _onnx_output(o: Output, ks: list, nodes: list, inits: list, done: dict,
                 dynamic: bool = False) -> str:
    n = o.name
    if o.layout == "count":
        nodes += [helper.make_node("Greater", [done[o.count_of], "half"], [f"{n}_gt"]),
                  helper.make_node("Cast", [f"{n}_gt"], [f"{n}_f"], to=TensorProto.FLOAT),
                  helper.make_node("ReduceSum", [f"{n}_f", "axis1"], [n], keepdims=0)]
        return n
    levels = []
    for li, (s, pre, kl) in enumerate(zip(o.strides, o.pre, ks, strict=True)):
        parts, c0 = [], 0
        for gi, (g, k) in enumerate(zip(o.groups, kl, strict=True)):
            p = f"{n}_{li}_{gi}"
            inits += [helper.make_tensor(f"{p}_w", TensorProto.FLOAT, k.shape, k.ravel()),
                      helper.make_tensor(f"{p}_c", TensorProto.FLOAT, [1, g.n, *pre.shape[:2]],
                                         pre[:, :, c0:c0 + g.n].transpose(2, 0, 1).ravel())]
            nodes += [helper.make_node("Conv", ["images", f"{p}_w"],
                                       [f"{p}_pre" if dynamic else f"{p}_conv"],
                                       kernel_shape=[s, s], strides=[s, s])]
            if not dynamic:
                nodes.append(helper.make_node("Add", [f"{p}_conv", f"{p}_c"], [f"{p}_pre"]))
            if g.act == "sigmoid":
                nodes.append(helper.make_node("Sigmoid", [f"{p}_pre"], [f"{p}_act"]))
            parts.append(f"{p}_act" if g.act == "sigmoid" else f"{p}_pre")
            c0 += g.n
        p = f"{n}_{li}"
        inits.append(helper.make_tensor(f"{p}_shape", TensorProto.INT64, [3],
                                        [1, o.channels, -1]))
        nodes += [helper.make_node("Concat", parts, [f"{p}_cat"], axis=1),
                  helper.make_node("Reshape", [f"{p}_cat", f"{p}_shape"], [f"{p}_flat"]),
                  helper.make_node("Transpose", [f"{p}_flat"], [f"{p}_rows"], perm=[0, 2, 1])]
        levels.append(f"{p}_rows")
    last = {"rows": n, "channels_first": f"{n}_rows", "flat": f"{n}_rows"}[o.layout]
    nodes.append(helper.make_node("Concat", levels, [last], axis=1))
    if o.layout == "channels_first":
        nodes.append(helper.make_node("Transpose", [last], [n], perm=[0, 2, 1]))
    elif o.layout == "flat":
        nodes.append(helper.make_node("Reshape", [last, "flat_shape"], [n]))
    return n


def build_onnx(case: Case, path: Path, dynamic: bool = False) -> Path:
    """The case's model with ``onnx.helper``: NCHW float input ``images``; ``dynamic``
    leaves the input's height and width symbolic and adds no constant maps, so the outputs'
    anchor counts are only known when it runs (as exports with dynamic axes do)."""
    nodes: list = []
    inits = [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
             helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("flat_shape", TensorProto.INT64, [2], [1, -1])]
    done: dict[str, str] = {}
    for o, ks in zip(case.outputs, kernels(case), strict=True):
        done[o.name] = _onnx_output(o, ks, nodes, inits, done, dynamic)
    order = case.onnx_order or list(range(len(case.outputs)))
    outs = [helper.make_tensor_value_info(case.outputs[i].name, TensorProto.FLOAT, None)
            for i in order]
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                        [1, 3, "height", "width"] if dynamic else
                                        [1, 3, SIZE, SIZE])
    model = helper.make_model(helper.make_graph(nodes, case.name, [inp], outs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model)   # outputs get their shapes
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_card(model: Path, output: str, backend: str = "onnxruntime", layout: str = "NCHW",
               dtype: str = "float32", name: str = "") -> Path:
    """A card for a test model (classes: car, motorbike)."""
    text = f"""name: {name or model.stem}
file: {model.name}
sha256: {sha256_file(model)}
backend: {backend}
input: {{size: [{SIZE}, {SIZE}], layout: {layout}, dtype: {dtype}}}
output:
  {output}
num_classes: {len(CLASSES)}
class_map: {{0: car, 1: motorbike}}
licence: test
source: test
"""
    p = model.with_name(f"{name or model.stem}.yaml")
    p.write_text(text)
    return p


@pytest.fixture(scope="session")
def onnx_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case as .onnx."""
    out = tmp_path_factory.mktemp("onnx_heads")
    for c in cases():
        build_onnx(c, out / f"{c.name}.onnx")
    return out


def tf_python() -> str | None:
    """An interpreter with TensorFlow: ``POLELINK_TF_PYTHON``, else this one if it has it."""
    env = os.environ.get("POLELINK_TF_PYTHON")
    if env:
        return env
    return sys.executable if importlib.util.find_spec("tensorflow") else None


@pytest.fixture(scope="session")
def tflite_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case as .tflite (float, int8, uint8), converted once per session."""
    py = tf_python()
    if py is None:
        msg = ("TFLite test models need TensorFlow (a test-time converter): install the dev "
               "extra (pip install -e '.[dev]') or set POLELINK_TF_PYTHON to an interpreter "
               "with tensorflow-cpu")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (in CI this is an error, not a skip)")
        pytest.skip(msg)
    out = tmp_path_factory.mktemp("tflite_heads")
    r = subprocess.run([py, str(ROOT / "tests" / "tflite_models.py"), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def assert_decoded(det: object, expected: list, box_tol: float, score_tol: float) -> None:
    """The detections on a black frame are exactly the expected ones."""
    d = det.detect(BLACK)  # type: ignore[attr-defined]
    got = sorted(zip(d.class_names(), d.boxes.tolist(), d.scores.tolist(), strict=True))
    want = sorted(expected)
    assert [g[0] for g in got] == [w[0] for w in want], (got, want)
    for (_, gb, gs), (_, wb, ws) in zip(got, want, strict=True):
        np.testing.assert_allclose(gb, wb, atol=box_tol, err_msg=str(got))
        assert gs == pytest.approx(ws, abs=score_tol), got


# --- every head on onnxruntime --------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_head_on_onnxruntime(onnx_models: Path, name: str) -> None:
    case = CASES[name]
    card = write_card(onnx_models / f"{name}.onnx", case.card_output)
    assert_decoded(load_detector(card, confidence=0.3), case.expected, 1e-3, 1e-4)


# --- every head on TFLite: float, int8 and uint8 ----------------------------------------------

@pytest.mark.parametrize("variant", ["float", "int8", "uint8"])
@pytest.mark.parametrize("name", list(CASES))
def test_head_on_tflite(tflite_models: Path, name: str, variant: str) -> None:
    case = CASES[name]
    model = tflite_models / f"{name}_{variant}.tflite"
    card = write_card(model, case.card_output, "tflite", "NHWC",
                      "uint8" if variant == "uint8" else "float32")
    det = load_detector(card, confidence=0.3)
    if variant != "float":   # quantised in and out: the runtime (de)quantises
        assert det.runtime.inputs[0].quantised
        assert all(o.quantised for o in det.runtime.outputs if o.name in det.head.names)
    # quantised outputs are exact to about one step (1/255 of the tensor's range: coarse
    # where a tensor holds pixel boxes and scores together, as YOLO exports do)
    step = max((o.scale for o in det.runtime.outputs if o.name in det.head.names), default=0)
    if variant == "float":
        assert_decoded(det, case.expected, 1e-3, 1e-4)
    else:
        per_px = SIZE if "normalized" in case.card_output or "ssd" in case.card_output else 1
        assert_decoded(det, case.expected, 0.5 + 2 * step * per_px, 0.01 + step)


@pytest.mark.parametrize("name", ["yolox_raw", "yolov8", "gfl", "ssd"])
def test_onnx_and_tflite_agree_on_a_random_frame(onnx_models: Path, tflite_models: Path,
                                                 name: str) -> None:
    """The same weights give the same raw outputs on both runtimes (layouts agree)."""
    case = CASES[name]
    a = load_detector(write_card(onnx_models / f"{name}.onnx", case.card_output))
    b = load_detector(write_card(tflite_models / f"{name}_float.tflite", case.card_output,
                                 "tflite", "NHWC"))
    frame = np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    ra, rb = a.infer(a.prepare(frame)[0]), b.infer(b.prepare(frame)[0])
    assert [x.shape for x in ra] == [x.shape for x in rb]
    for x, y in zip(ra, rb, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3)


# --- the real YOLOX-Nano ----------------------------------------------------------------------

def test_real_yolox_nano_passes_the_model_check() -> None:
    need_shared(YOLOX_ONNX)
    from agent.vision.detect.selfcheck import check_model

    det = load_detector(ROOT / "models" / "yolox_nano.yaml")
    assert det.head.names == ["output"] and det.runtime.outputs[0].shape == (1, 3549, 85)
    assert "synthetic 416x416 frame" in check_model(det)


# --- outputs named, listed, never guessed ---------------------------------------------------

def test_several_outputs_need_names_and_errors_list_every_output(onnx_models: Path) -> None:
    gfl = onnx_models / "gfl.onnx"
    with pytest.raises(ModelError) as ei:      # no names: never output 0 of six
        load_detector(write_card(gfl, "format: yolov8", name="unnamed"))
    msg = str(ei.value)
    assert "reads 1 output and the model has 6" in msg and "output.outputs" in msg
    for s in (8, 16, 32):
        assert f"'cls_{s}' [1, {(SIZE // s) ** 2}, 2] float32" in msg
        assert f"'reg_{s}' [1, {(SIZE // s) ** 2}, 32] float32" in msg
    with pytest.raises(ModelError, match=r"names output 'cls_64'.*no such output.*'reg_32'"):
        load_detector(write_card(gfl, "format: gfl\n  outputs: [[cls_8, reg_8], "
                                      "[cls_16, reg_16], [cls_64, reg_32]]", name="missing"))
    with pytest.raises(ModelError, match=r"class scores output 'reg_8' is \[1, 64, 32\], "
                                         r"expected \[1, 64, 2\].*6 outputs"):
        load_detector(write_card(gfl, "format: gfl\n  outputs: [[reg_8, cls_8], "
                                      "[reg_16, cls_16], [reg_32, cls_32]]", name="swapped"))


def test_named_single_output_of_a_multi_output_model(onnx_models: Path) -> None:
    ssd = onnx_models / "ssd.onnx"   # graph order: scores, boxes, count, classes
    det = load_detector(write_card(ssd, "format: ssd\n  outputs: [boxes, classes, scores, "
                                        "count]", name="ssd_named"), confidence=0.3)
    assert det.head.names == ["boxes", "classes", "scores", "count"]
    with pytest.raises(ModelError, match=r"boxes, classes, scores, count \('scores', 'boxes', "
                                         r"'count', 'classes'\).*output"):
        load_detector(write_card(ssd, "format: ssd", name="ssd_order"))  # ssd_order 0..3


# --- decode-time errors: one line, exit 3 -------------------------------------------------------

def _video(path: Path, frames: int = 6) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIZE, SIZE))
    for _ in range(frames):
        w.write(BLACK)
    w.release()
    return path


def _count(video: Path, card: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "count", str(video), "--model",
                           str(card), "--line", "0,32,63,32", "-q"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


WRONG_STRIDES = "format: yolox\n  decoded: false\n  strides: [8, 16]"


def test_wrong_strides_is_caught_at_load(onnx_models: Path, tmp_path: Path) -> None:
    card = write_card(onnx_models / "yolox_raw.onnx", WRONG_STRIDES, name="strides")
    with pytest.raises(ModelError, match=r"strides \[8, 16\] at 64x64 give 80 anchor points, "
                                         r"output 'output' has 84"):
        load_detector(card)
    r = _count(_video(tmp_path / "v.avi"), card)
    assert r.returncode == 3, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "give 80 anchor points" in r.stderr


def test_decode_time_error_is_one_line_exit_3(tmp_path: Path) -> None:
    """Dynamic output shapes: the mismatch shows only when the model runs."""
    model = build_onnx(CASES["yolox_raw"], tmp_path / "dyn.onnx", dynamic=True)
    card = write_card(model, WRONG_STRIDES)
    det = load_detector(card)                     # [?, ?, 7]: nothing to check at load
    assert det.runtime.outputs[0].shape == (1, None, 7)
    with pytest.raises(ModelError) as ei:
        det.detect(BLACK)
    assert "\n" not in str(ei.value) and "give 80 anchor points" in str(ei.value)
    r = _count(_video(tmp_path / "v.avi"), card)
    assert r.returncode == 3, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "dyn.yaml" in r.stderr and "give 80 anchor points" in r.stderr


def test_unexpected_arrays_and_numpy_failures_become_one_line(onnx_models: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    det = load_detector(write_card(onnx_models / "yolov8.onnx", "format: yolov8", name="np"))
    raw = det.infer(det.prepare(BLACK)[0])
    with pytest.raises(ModelError, match=r"np.yaml: output format yolov8: output 'output0' "
                                         r"declared \[1, 6, 80\] but gave \[1, 6, 79\]"):
        det.decode([raw[0][:, :, :79]], None)  # type: ignore[arg-type]

    def broken(*_: object) -> None:
        return np.zeros(3)[[5]]  # IndexError, as a head meeting an unexpected array would

    monkeypatch.setattr(det.head, "decode", broken)
    with pytest.raises(ModelError) as ei:
        det.detect(BLACK)
    assert str(ei.value).startswith(f"{det.card.card_path}: cannot decode the model's output "
                                    f"(yolov8 head, outputs ['output0']): IndexError: ")
    assert "\n" not in str(ei.value)


def test_a_live_camera_whose_model_fails_at_decode_gets_model_error(tmp_path: Path) -> None:
    from agent.clock import SystemClock
    from agent.settings.schema import load_config
    from agent.vision.aggregates import IntervalAggregator
    from agent.vision.camera import CameraStats
    from agent.vision.worker import CameraWorker
    from tests.test_config import GOOD

    card = write_card(build_onnx(CASES["yolox_raw"], tmp_path / "dyn.onnx", dynamic=True),
                      WRONG_STRIDES)
    cfg_path = tmp_path / "pole.yaml"
    cfg_path.write_text(GOOD.replace("{card}", str(card)))
    cam = load_config(cfg_path).camera("north")

    class Frame:
        image, index, monotonic = BLACK, 0, 0.0

    class Source:
        stats = CameraStats()
        ended = threading.Event()
        stopped = False

        def get(self, timeout: float) -> Frame:
            return Frame()

        def stop(self) -> None:
            self.stopped = True

    clock = SystemClock()
    agg = IntervalAggregator("p", "s", "north", {"main": ("a", "b")}, [], 60, clock.time(),
                             clock.monotonic())
    src = Source()
    w = CameraWorker(cam, src, agg, clock, load_detector(card))  # type: ignore[arg-type]
    w.run(threading.Event())                      # returns: the camera stopped, no traceback
    assert w.state == "model_error" and src.stopped
    assert "give 80 anchor points" in w.model_error and "\n" not in w.model_error


# --- --check-models runs the model ----------------------------------------------------------------

def _validate(tmp_path: Path, card: Path) -> subprocess.CompletedProcess:
    from tests.test_config import GOOD

    cfg = tmp_path / f"pole-{card.stem}.yaml"
    cfg.write_text(GOOD.replace("{card}", str(card)))
    return subprocess.run([sys.executable, "-m", "agent", "validate", str(cfg),
                           "--check-models"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def _logit_model(tmp_path: Path) -> Path:
    """yolov8 whose class scores are logits (no sigmoid in the graph)."""
    case = CASES["yolov8"]
    (o,) = case.outputs
    o = dataclasses.replace(o, groups=[o.groups[0], dataclasses.replace(o.groups[1],
                                                                         act="linear")])
    return build_onnx(dataclasses.replace(case, outputs=[o], name="logits"),
                      tmp_path / "logits.onnx")


def test_check_models_passes_good_cards(onnx_models: Path, tmp_path: Path) -> None:
    r = _validate(tmp_path, write_card(onnx_models / "gfl.onnx", CASES["gfl"].card_output))
    assert r.returncode == 0, r.stderr
    assert "ran a synthetic 64x64 frame" in r.stdout and "OK" in r.stdout
    r = _validate(tmp_path, ROOT / "models" / "simnet.yaml")
    assert r.returncode == 0 and "fit for simulator_top_down" in r.stdout, r.stdout + r.stderr
    # logits, once the card says so, decode right
    card = write_card(_logit_model(tmp_path), "format: yolov8\n  sigmoid: true", name="sig")
    assert _validate(tmp_path, card).returncode == 0
    assert_decoded(load_detector(card, confidence=0.3), CASES["yolov8"].expected, 1e-3, 1e-4)


@pytest.mark.parametrize("model, output, message", [
    # end-to-end rows read as YOLOv8: the class-id column becomes a "score" of up to 7
    ("e2e_pixels", "format: yolov8\n  outputs: [dets]", r"scores range \S+\.\.(6\.9|7)\S*, outside \[0, 1\]"),
    # pixel boxes read as normalised: boxes 64 times too large
    ("e2e_pixels", "format: e2e\n  coords: normalized", r"boxes scoring >= 0.1 "
                                                         r"reach x .*outside the 64x64 input"),
    ("logits", "format: yolov8", r"scores range -6.*outside \[0, 1\].*sigmoid: true"),
    ("yolox_raw", WRONG_STRIDES, r"give 80 anchor points"),
    ("gfl", "format: gfl\n  outputs: [[reg_8, cls_8], [reg_16, cls_16], [reg_32, cls_32]]",
     r"class scores output 'reg_8'.*'cls_32' \[1, 4, 2\]"),
], ids=["wrong-format", "wrong-coords", "logits", "wrong-strides", "wrong-outputs"])
def test_check_models_catches_a_wrong_card(onnx_models: Path, tmp_path: Path, model: str,
                                           output: str, message: str) -> None:
    path = _logit_model(tmp_path) if model == "logits" else onnx_models / f"{model}.onnx"
    card = write_card(path, output, name=f"wrong_{model}")
    r = _validate(tmp_path, card)
    assert r.returncode == 3, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"{tmp_path}/pole-wrong_{model}.yaml: cameras.north.detector.model: ")
    assert "Traceback" not in r.stderr
    import re

    assert re.search(message, line), line
