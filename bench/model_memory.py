"""Peak resident memory of batch-1 inference: fastconv against PyTorch, each in its own process.

    python bench/model_memory.py [model] [threads]      (default: resnet50 2)

Each process imports its framework, builds the model (the same architecture and
weight count), runs one inference to warm up (Numba compiles, caches fill),
then resets the kernel's peak counter (``/proc/self/clear_refs``) and runs one
more. It prints resident memory (Linux's VmRSS/VmHWM) after the build, after the
warm-up, and the peak of the measured inference, in MiB.
"""

import json
import subprocess
import sys

CHILD = r"""
import json, sys
import numpy as np

def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024

framework, name, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
imported = status("VmRSS")
shape = (1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224)
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
if framework == "fastconv":
    import fastconv as fc
    fc.set_num_threads(threads)
    model = getattr(fc.models, name)().eval()
    run = lambda: model(x)
else:
    import torch
    from fastconv.models.torch_reference import build
    torch.set_num_threads(threads)
    model, xt = build(name).eval(), torch.from_numpy(x)
    def run():
        with torch.inference_mode():
            return model(xt)
built = status("VmRSS")
run()
warm = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                              # reset VmHWM to the current RSS
run()
print(json.dumps(dict(imported=imported, built=built, warm=warm, peak=status("VmHWM"))))
"""


def measure(framework, name, threads):
    out = subprocess.run([sys.executable, "-c", CHILD, framework, name, str(threads)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet50"
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    print(f"{name} batch-1 inference, {threads} threads; resident memory in MiB")
    print(f"{'':<10}{'imported':>10}{'built':>10}{'warm':>10}{'peak':>10}"
          f"{'peak - built':>14}")
    for framework in ("torch", "fastconv"):
        try:
            m = measure(framework, name, threads)
        except subprocess.CalledProcessError as exc:
            print(f"{framework:<10} failed: {exc.stderr.strip().splitlines()[-1]}")
            continue
        print(f"{framework:<10}{m['imported']:10.0f}{m['built']:10.0f}{m['warm']:10.0f}"
              f"{m['peak']:10.0f}{m['peak'] - m['built']:14.0f}")


if __name__ == "__main__":
    main()
