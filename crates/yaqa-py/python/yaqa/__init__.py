"""yaqa: model-preserving post-training quantization of LLMs (YAQA, GPTQ, LDLQ, RTN).

The functions are those of the ``yaqa`` command line, with its defaults, run on the CPU in the
calling process::

    import yaqa
    report = yaqa.quantize("model.gguf", "model-int4.safetensors", method="yaqa", bits=4)
    print(report["eval"])   # {'kl': ..., 'ppl': ..., 'original_ppl': ..., ...}

- ``quantize(model, out, ...)``: every linear layer of a model, then its KL and perplexity.
- ``collect(model, out, ...)``: Kronecker factors over a calibration set (``yaqa hessian``), by shard
  with ``shard="I/N"``; ``merge(out, shards)`` adds the shards up.
- ``evaluate(model, quantized, ...)``: KL to the original and perplexity of quantized files.
- ``compare(model, work, ...)``: the KL table of several methods and quantizers (INT bit widths,
  ``quantizers=["e8p"]`` for the E8P lattice codebook, ``["trellis2"]`` for the QTIP trellis).

Every function takes paths as ``str`` or ``os.PathLike``, releases the GIL while it works, and
accepts ``progress=``, a callable that receives one dict per event:

- ``{"event": "start", "label": str, "total": int}``: a counted stage starts (sequences, layers,
  windows); ``{"event": "step", "done": int}``: steps of it finished; ``{"event": "finish"}``: it
  ended.
- ``{"event": "note", "text": str}``: a line for the user (what is collected, reused, resumed).
- ``{"event": "layer", "name": str, "proxy_one_sided": float, "proxy_two_sided": float | None,
  "seconds": float, "done": int, "total": int, "resumed": bool}``: one layer quantized (the proxies
  are ``None`` for a layer an earlier run had finished).

Errors of the library raise ``YaqaError`` with the library's message, which names the file, argument
or layer at fault. Ctrl-C, or an exception raised by the ``progress`` callable, stops the job at its
next event and is raised; what the job leaves is what a killed run leaves, so calling it again with
the same arguments resumes.
"""

from ._yaqa import (
    YaqaError,
    __version__,
    collect,
    compare,
    evaluate,
    merge,
    quantize,
)

__all__ = [
    "YaqaError",
    "__version__",
    "collect",
    "compare",
    "evaluate",
    "merge",
    "quantize",
]
