"""fp32 vs bf16 on this machine: a model-sized matmul and a short sampled generate of SmolLM2, alternating the
two dtypes and keeping each one's fastest trial (other work on a shared machine slows both alike). This is the
measurement behind device.py's CPU rules; it is run by hand, never by dtype=auto.

    OMP_NUM_THREADS=1 python scripts/dtype_speed.py          # -> prints, and results/dtype-<machine>.json
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from device import cpu_features, machine_name                                     # noqa: E402
from load_weights import load_model                                 # noqa: E402
from engine import generate                                         # noqa: E402


def fastest(fns, trials):
    best = {k: float("inf") for k in fns}
    for _ in range(trials):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main():
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    ops = {k: (torch.randn(256, 576, dtype=d), torch.randn(576, 1536, dtype=d)) for k, d in dtypes.items()}
    mm = fastest({k: (lambda a=a, b=b: [a @ b for _ in range(10)]) for k, (a, b) in ops.items()}, 15)
    flops = 10 * 2 * 256 * 576 * 1536
    model, tok = load_model("smollm2")
    models = {"fp32": model, "bf16": load_model("smollm2")[0].to_compute_dtype(torch.bfloat16)}
    prompts = [tok.chat_prompt(f"Which is larger, {a} or {a + 7}? Answer with just the number.", system=None)
               for a in range(11, 19)]
    gen = fastest({k: (lambda m=m: generate(m, prompts, num_samples=8, max_new_tokens=16, temperature=1.0,
                                            eos_id=None, pad_id=tok.pad_id, seeds=list(range(8))))
                   for k, m in models.items()}, 3)
    result = {"machine": machine_name(), "cpu": cpu_features(), "threads": torch.get_num_threads(),
              "matmul_gflops": {k: round(flops / s / 1e9, 1) for k, s in mm.items()},
              "generate_tok_per_s": {k: round(64 * 16 / s, 1) for k, s in gen.items()}}
    print(json.dumps(result, indent=1))
    out = Path(__file__).resolve().parents[1] / "results" / f"dtype-{machine_name()}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
