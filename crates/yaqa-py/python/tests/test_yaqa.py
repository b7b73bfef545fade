"""The Python package against the SmolLM2-135M fixture in ../shared (DESIGN.md §7).

One quantization runs per module with small settings (2 data-free sequences of 32 tokens, LDLQ at 4
bits without the Hadamard rotations, which cost most of a layer's time on two cores) and the tests
read its report, its progress events and its file. README.md's example
(``crates/yaqa-py/example.py``) runs as written, in a subprocess. Refused arguments raise before
any rounding; a raising callback and Ctrl-C stop a run within its first layers.

Without the fixture the tests that need it are skipped, naming the path; with ``CI=true`` they fail,
as the Rust tests do. ``SHARED`` points at the shared folder (default: ``../shared`` beside the repo).
"""

import ast
import inspect
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import yaqa
from yaqa import _yaqa

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
MODEL = SHARED / "fixtures" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
EXAMPLE = HERE.parents[1] / "example.py"

# SmolLM2-135M: 30 blocks of 7 linear layers.
BLOCKS = 30
KINDS = {
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
}
SMALL = dict(n_seqs=2, seq_len=32, eval_windows=1, eval_window=32)


@pytest.fixture(scope="module")
def model():
    if not MODEL.is_file():
        why = f"{MODEL} is missing (the SmolLM2 fixture; set SHARED=path/to/shared)"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return MODEL


@pytest.fixture(scope="module")
def quantized(model, tmp_path_factory):
    """One LDLQ run: (output path, report, progress events)."""
    out = tmp_path_factory.mktemp("quantize") / "ldlq-int4.safetensors"
    events = []
    report = yaqa.quantize(
        model, out, method="ldlq", bits=4, incoherence=False, progress=events.append, **SMALL
    )
    return out, report, events


def finite(x):
    return isinstance(x, float) and math.isfinite(x)


def test_quantize_writes_every_layer(quantized):
    out, report, _ = quantized
    assert out.is_file()
    assert report["out"] == out
    assert report["resumed"] == 0
    layers = report["layers"]
    assert len(layers) == BLOCKS * len(KINDS)
    names = {layer["name"] for layer in layers}
    assert names == {f"model.layers.{b}.{k}" for b in range(BLOCKS) for k in KINDS}
    for layer in layers:
        # LDLQ is one-sided: a relative proxy error in [0, 1) and no two-sided one.
        assert finite(layer["proxy_one_sided"]) and 0 <= layer["proxy_one_sided"] < 1, layer
        assert layer["proxy_two_sided"] is None
        assert layer["bits_per_weight"] >= 4
        assert not layer["resumed"]


def test_quantize_evaluates_the_result(quantized):
    _, report, _ = quantized
    ev = report["eval"]
    assert ev["n_windows"] == SMALL["eval_windows"] and ev["window"] == SMALL["eval_window"]
    assert ev["text"] == "model-sampled text"
    # A 4-bit model differs from the original: KL strictly positive, finite.
    assert finite(ev["kl"]) and ev["kl"] > 0
    assert finite(ev["ppl"]) and ev["ppl"] > 1
    assert finite(ev["original_ppl"]) and ev["original_ppl"] > 1


def test_progress_reports_stages_and_layers(quantized):
    _, report, events = quantized
    kinds = [e["event"] for e in events]
    assert {"start", "step", "finish", "layer"} <= set(kinds)
    # Stages nest nowhere: every start has its finish before the next start.
    depth = 0
    for e in events:
        if e["event"] == "start":
            assert depth == 0 and isinstance(e["label"], str) and e["total"] > 0
            depth += 1
        elif e["event"] == "finish":
            assert depth == 1
            depth -= 1
    assert depth == 0
    starts = [e for e in events if e["event"] == "start"]
    assert {"label": "ldlq", "total": BLOCKS * len(KINDS), "event": "start"} in starts
    layers = [e for e in events if e["event"] == "layer"]
    assert [e["done"] for e in layers] == list(range(1, len(report["layers"]) + 1))
    assert [e["name"] for e in layers] == [layer["name"] for layer in report["layers"]]
    assert [e["proxy_one_sided"] for e in layers] == [
        layer["proxy_one_sided"] for layer in report["layers"]
    ]


def test_evaluate_matches_the_quantize_evaluation(model, quantized):
    out, report, _ = quantized
    events = []
    table = yaqa.evaluate(
        model, out, window=SMALL["eval_window"], n_windows=SMALL["eval_windows"],
        progress=events.append,
    )
    assert [row["model"] for row in table["rows"]] == ["ldlq-int4"]
    row = table["rows"][0]
    assert finite(row["kl"]) and row["kl"] >= 0
    # The same sampled windows (seed 1 by default in both) and the same weights: the same numbers.
    ev = report["eval"]
    assert row["kl"] == pytest.approx(ev["kl"], rel=1e-6)
    assert row["ppl"] == pytest.approx(ev["ppl"], rel=1e-6)
    assert table["original_ppl"] == pytest.approx(ev["original_ppl"], rel=1e-6)
    assert any(e["event"] == "start" and e["label"] == "evaluating" for e in events)


def test_collect_shards_and_merge(model, tmp_path):
    kw = dict(sketch="xtx", n_seqs=2, seq_len=32)
    a = yaqa.collect(model, tmp_path / "a", shard="0/2", **kw)
    b = yaqa.collect(model, tmp_path / "b", shard="1/2", **kw)
    assert (a["n_seqs"], b["n_seqs"]) == (1, 1)
    assert a["sketch"] == "xtx" and a["files"] == BLOCKS * len(KINDS) and a["next"] is None
    merged = yaqa.merge(tmp_path / "ab", [tmp_path / "a", tmp_path / "b"])
    assert merged == {
        "out": tmp_path / "ab", "shards": 2, "files": a["files"], "records": True,
    }
    # The same shard twice holds the same sequences twice: the library refuses it.
    with pytest.raises(yaqa.YaqaError):
        yaqa.merge(tmp_path / "aa", [tmp_path / "a", tmp_path / "a"])


def test_collect_layer_groups_and_join(model, tmp_path):
    kw = dict(sketch="xtx", n_seqs=1, seq_len=32)
    whole = yaqa.collect(model, tmp_path / "all", **kw)
    half = BLOCKS // 2
    low = yaqa.collect(model, tmp_path / "low", layers=f"0..{half}", **kw)
    high = yaqa.collect(model, tmp_path / "high", layers=f"{half}..{BLOCKS}", **kw)
    assert (low["files"], high["files"]) == (half * len(KINDS), (BLOCKS - half) * len(KINDS))
    joined = yaqa.merge(tmp_path / "joined", [tmp_path / "low", tmp_path / "high"])
    assert joined["files"] == whole["files"]
    for f in (tmp_path / "all").iterdir():
        assert (tmp_path / "joined" / f.name).read_bytes() == f.read_bytes(), f.name
    with pytest.raises(ValueError, match="A..B"):
        yaqa.collect(model, tmp_path / "x", layers="3", **kw)
    with pytest.raises(ValueError, match="20G"):
        yaqa.collect(model, tmp_path / "x", max_memory="lots", **kw)
    with pytest.raises(yaqa.YaqaError, match="too small for one block"):
        yaqa.collect(model, tmp_path / "x", max_memory="1M", **kw)


def test_missing_model_raises_yaqa_error(tmp_path):
    out = tmp_path / "q.safetensors"
    with pytest.raises(yaqa.YaqaError, match="/nonexistent/model.gguf") as err:
        yaqa.quantize(model="/nonexistent/model.gguf", out=out)
    assert isinstance(err.value, Exception)
    assert not out.exists()
    with pytest.raises(yaqa.YaqaError, match="/nonexistent/model.gguf"):
        yaqa.evaluate("/nonexistent/model.gguf", [tmp_path / "q.safetensors"])


def test_arguments_the_binding_cannot_read_raise_value_error(tmp_path):
    out = tmp_path / "q.safetensors"
    with pytest.raises(ValueError, match="method"):
        yaqa.quantize("m.gguf", out, method="awq")
    with pytest.raises(ValueError, match="disagree"):
        yaqa.quantize("m.gguf", out, bits=2, quantizer="int3")
    with pytest.raises(ValueError, match="disagree"):
        yaqa.quantize("m.gguf", out, bits=3, quantizer="e8p")
    with pytest.raises(ValueError, match="e8p"):
        yaqa.quantize("m.gguf", out, quantizer="e9p")
    with pytest.raises(ValueError, match="2, 3, 4 or 8 bits"):
        yaqa.quantize("m.gguf", out, overrides=["down_proj=bits:5"])
    with pytest.raises(ValueError, match="give one of them"):
        yaqa.compare("m.gguf", tmp_path, bits=[2], quantizers=["e8p"])
    with pytest.raises(ValueError, match="e8p"):
        yaqa.compare("m.gguf", tmp_path, quantizers=["int5"])
    with pytest.raises(ValueError, match="I/N"):
        yaqa.collect("m.gguf", tmp_path, shard="2")
    with pytest.raises(ValueError, match="yaqa-a"):
        yaqa.compare("m.gguf", tmp_path, methods=["yaqa"])
    with pytest.raises(ValueError, match="damp"):
        yaqa.compare("m.gguf", tmp_path, damp=-1.0)


def test_library_refusals_raise_yaqa_error(model, tmp_path):
    # Both are refused before any work, with the library's words.
    with pytest.raises(yaqa.YaqaError, match="5 is not one of 2, 3, 4, 8"):
        yaqa.compare(model, tmp_path, bits=[5])
    with pytest.raises(yaqa.YaqaError, match="bits: 5"):
        yaqa.quantize(model, tmp_path / "q.safetensors", bits=5)
    with pytest.raises(yaqa.YaqaError, match="--method gptq"):
        yaqa.quantize(model, tmp_path / "q.safetensors", method="gptq", quantizer="e8p")
    with pytest.raises(yaqa.YaqaError, match="--methods gptq"):
        yaqa.compare(model, tmp_path, quantizers=["e8p"])


def test_an_exception_in_the_callback_stops_the_job(model, tmp_path):
    class Enough(Exception):
        pass

    seen = []

    def progress(event):
        seen.append(event)
        if event["event"] == "layer":
            raise Enough

    out = tmp_path / "q.safetensors"
    with pytest.raises(Enough):
        yaqa.quantize(model, out, method="rtn", incoherence=False, progress=progress, **SMALL)
    # The job stopped at the first layer: no further event, no output file.
    assert seen[-1]["event"] == "layer" and seen[-1]["done"] == 1
    assert not out.exists()


def test_ctrl_c_stops_the_job(model, tmp_path):
    out = tmp_path / "q.safetensors"
    # SIGINT arrives while the job runs: sent at the first finished layer, it stops the job at an event
    # (a timer was racy: on a fast machine the job could end before it fired).
    sent = []

    def interrupt(event):
        if event["event"] == "layer" and not sent:
            sent.append(event["name"])
            os.kill(os.getpid(), signal.SIGINT)

    # A shell that starts the suite in the background (as a CI runner may) leaves SIGINT ignored, and
    # Python then installs no handler for it: install Python's own, as in an interactive session.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            yaqa.quantize(model, out, method="rtn", incoherence=False, progress=interrupt, **SMALL)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent, "no layer event arrived"
    assert not out.exists()


def test_example_runs_as_written(model, tmp_path):
    run = subprocess.run(
        [sys.executable, str(EXAMPLE), str(model)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    ev = ast.literal_eval(run.stdout.strip())
    assert finite(ev["kl"]) and ev["kl"] > 0
    assert finite(ev["ppl"]) and finite(ev["original_ppl"])
    written = list(tmp_path.glob("*.safetensors"))
    assert len(written) == 1
    # The file it wrote evaluates to what it printed.
    table = yaqa.evaluate(model, written[0], window=ev["window"], n_windows=ev["n_windows"])
    assert table["rows"][0]["kl"] == pytest.approx(ev["kl"], rel=1e-6)


def test_signatures_show_the_library_defaults():
    defaults = _yaqa._library_defaults()
    assert set(defaults) == {"quantize", "collect", "evaluate", "compare"}
    for name, expected in defaults.items():
        params = inspect.signature(getattr(yaqa, name)).parameters
        shown = {key: params[key].default for key in expected}
        assert shown == expected, name


def test_every_function_is_documented():
    functions = [name for name in yaqa.__all__ if inspect.isbuiltin(getattr(yaqa, name))]
    assert sorted(functions) == ["collect", "compare", "evaluate", "merge", "quantize"]
    for name in functions:
        doc = getattr(yaqa, name).__doc__
        assert doc and "Returns" in doc and "Raises" in doc, name
    assert yaqa.YaqaError.__doc__
