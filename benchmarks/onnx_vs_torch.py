"""ONNX Runtime (CPU, 1 intra-op thread) vs eager PyTorch (1 thread) on conv-vae-mnist, measured in the same run.

Exports conv-vae-mnist with `zoo.export.export_onnx`, then times reconstruct (real MNIST
test images) and decode (their encodings) at batch 1 and 64. Prints ms per call (median
of repeated timing rounds) and the ratio torch / ORT: above 1 means ONNX Runtime is faster.

    .venv/bin/python benchmarks/onnx_vs_torch.py [--seconds 1.0]
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import onnxruntime  # noqa: E402
import torch  # noqa: E402

import zoo  # noqa: E402
import zoo.data  # noqa: E402
from zoo.export import export_onnx  # noqa: E402
from zoo.export.verify import session  # noqa: E402

MODEL = "conv-vae-mnist"
TASKS = ("reconstruct", "decode")
BATCHES = (1, 64)
ROUNDS = 5


def ms_per_call(fn, seconds: float) -> float:
    """Median over ROUNDS rounds of the mean time of one call, each round lasting about ``seconds / ROUNDS``."""
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.1:
        fn()
        calls += 1
    per_round = max(1, int(calls / 0.1 * seconds / ROUNDS))
    rounds = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(per_round):
            fn()
        rounds.append((time.perf_counter() - start) / per_round * 1e3)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = zoo.load(MODEL)
    images = zoo.data.load("mnist", "test").images[:max(BATCHES)].float() / 255
    with torch.no_grad():
        inputs = {"reconstruct": images, "decode": model.encode(images)}
    rows = []
    with tempfile.TemporaryDirectory() as out:
        export_onnx(MODEL, out)
        for task in TASKS:
            sess = session(f"{out}/{task}.onnx", onnxruntime, threads=1)
            method = getattr(model, model.task(task).method)
            for batch in BATCHES:
                x = inputs[task][:batch]
                feed = {sess.get_inputs()[0].name: x.numpy()}

                def eager(x=x):
                    with torch.no_grad():
                        method(x)

                torch_ms = ms_per_call(eager, args.seconds)
                ort_ms = ms_per_call(lambda feed=feed: sess.run(None, feed), args.seconds)
                rows.append((task, batch, torch_ms, ort_ms))
    print(f"{MODEL}, torch {torch.__version__} eager (1 thread) vs onnxruntime {onnxruntime.__version__} "
          "CPUExecutionProvider (1 intra-op thread)")
    print(f"{'task':<12} {'batch':>5} {'torch ms':>10} {'ORT ms':>10} {'torch/ORT':>10}")
    for task, batch, torch_ms, ort_ms in rows:
        print(f"{task:<12} {batch:>5} {torch_ms:>10.3f} {ort_ms:>10.3f} {torch_ms / ort_ms:>9.2f}x")


if __name__ == "__main__":
    main()
