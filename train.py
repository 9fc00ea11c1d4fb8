"""`torchrun --nproc_per_node=N train.py model=... parallel=fsdp2 kernels=liger_rmpad` (same as `lmms-train`)."""
from lmms_engine.train import main

if __name__ == "__main__":
    main()
