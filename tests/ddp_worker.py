"""One rank of a 2-process data-parallel training run, for tests/test_train.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py OUT_DIR

Each rank builds the network from a *different* seed (100 + rank), so equal final weights
prove that DDP broadcast and all-reduced them; each writes its initial and final network
weights to OUT_DIR/init{R}.safetensors and OUT_DIR/rank{R}.safetensors.  train() picks the
gloo backend on CPU and writes checkpoints and the model folder from rank 0 only.
"""

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from diffusion.model import ModelSpec, build_denoiser
from diffusion.train import TrainConfig, train

SPEC = ModelSpec(net={"kind": "mlp", "dim": 2, "hidden": 16, "depth": 1, "embed_dim": 8},
                 precond={"kind": "edm", "sigma_data": 1.0}, data={"shape": (2,)})


def _weights(net):
    return {k: v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}


def main(out: Path):
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    assert world == 2, world
    torch.manual_seed(100 + rank)
    denoiser = build_denoiser(SPEC)
    save_file(_weights(denoiser.net), str(out / f"init{rank}.safetensors"))
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=10, batch_size=16, lr=1e-2, lr_warmup_steps=0, device="cpu",
                      checkpoint_every=10, log_every=5, progress=False)
    train(denoiser, data, cfg, out / "run", spec=SPEC, resume=False)
    save_file(_weights(denoiser.net), str(out / f"rank{rank}.safetensors"))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
