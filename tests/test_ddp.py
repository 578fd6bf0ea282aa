"""Two CPU processes under torchrun (gloo): DDP keeps the ranks' weights identical; rank 0 checkpoints."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    import zoo, zoo.data
    from zoo.training import TrainConfig, Trainer, setup, teardown

    out = Path(sys.argv[1])
    ctx = setup("cpu")
    assert ctx.world_size == 2 and ctx.backend == "gloo", ctx
    def data(split, n):
        g = torch.Generator().manual_seed(int(split == "test"))
        images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
        return zoo.data.ImageDataset(images, torch.zeros(n, dtype=torch.int64), name="fake", split=split,
                                     checksum="f" * 64)
    torch.manual_seed(0)
    model = zoo.create("dense-vae", image_size=8, hidden=[16], latent_dim=2)
    if ctx.rank == 1:  # different initial weights on rank 1: DDP must broadcast rank 0's
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    trainer = Trainer(model, data("train", 128), data("test", 32), TrainConfig(epochs=2, batch_size=32), out,
                      data_name="fake", ctx=ctx, progress=False)
    result = trainer.fit()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / f"rank{ctx.rank}.safetensors"))
    teardown(ctx)
""")


def test_two_process_ddp_ends_with_identical_weights(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    saved = load_file(str(out / "model.safetensors"))
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        assert torch.equal(rank0[key], saved[key]), key
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["world_size"] == 2 and recipe["backend"] == "gloo"
    # 128 images, global batch 32 -> 16 per rank -> 4 steps per epoch
    assert recipe["global_step"] == 8
    state = json.loads((out / "checkpoint.json").read_text())
    assert state["global_step"] == 8
    rng = load_file(str(out / state["path"] / "rng.safetensors"))
    assert {"cpu/rank0", "cpu/rank1"} <= rng.keys() and not torch.equal(rng["cpu/rank0"], rng["cpu/rank1"])
