"""``python -m zoo.training ARCH --data NAME ...`` = ``zoo train``; the entry point for torchrun::

    torchrun --nproc_per_node=2 -m zoo.training dense-vae --data mnist --out runs/ddp
"""

from zoo.cli import main

if __name__ == "__main__":
    import sys

    main(["train", *sys.argv[1:]], prog_name="zoo")
