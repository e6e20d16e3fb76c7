"""Exit 77 (with the reason on stderr) unless torch imports and sees a CUDA device; else name the device.

Shared by benchmarks/gpu.sh and benchmarks/gpu_check.sh. Usage: python benchmarks/cuda_present.py NAME HINT,
where NAME is the calling script and HINT says what to run on a CPU instead.
"""

import sys

name, hint = sys.argv[1], sys.argv[2]
try:
    import torch
except Exception as err:  # noqa: BLE001 -- any import failure means: nothing to run here
    print(f"{name}: cannot import torch ({err}); nothing was run.", file=sys.stderr)
    sys.exit(77)
if not torch.cuda.is_available():
    print(f"{name}: no CUDA device visible to torch {torch.__version__} (CUDA build: "
          f"{torch.version.cuda or 'none, a CPU build'}); nothing was run. Run it on a GPU machine; {hint}",
          file=sys.stderr)
    sys.exit(77)
print(f"{name}: {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})")
