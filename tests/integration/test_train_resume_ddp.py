"""Kill-and-resume (SIGKILL in a subprocess) and a 2-process DistributedDataParallel run on CPU (gloo)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rgops.config import from_dict
from rgops.models.cae import CAEConfig, ConditionalAE
from tests.helpers import free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import dataclasses, sys, torch
torch.set_num_threads(1)
from rgops.config import load_params
from rgops.training import load_preset, model_config, train_cae
from tests.conftest import make_training_datasets
ds = make_training_datasets(n=24)
fields, tcfg = load_preset(load_params("params.yaml"), "cae", "tiny")
tcfg = dataclasses.replace(tcfg, epochs=8, batch_size=4, checkpoint_every=1)
res = train_cae(ds, model_config("cae", ds, fields), tcfg, device="cpu",
                checkpoint_dir=sys.argv[1] if sys.argv[1] != "-" else None, resume=sys.argv[2] == "1")
torch.save(res.module.state_dict(), sys.argv[3])
"""


def _run(args, **kw):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, *args], cwd=ROOT, **kw)


def test_sigkill_then_resume_is_bit_for_bit(tmp_path):
    ref = _run(["-", "0", str(tmp_path / "ref.pt")])
    ckpt = tmp_path / "ckpt"
    victim = _run([str(ckpt), "0", str(tmp_path / "victim.pt")])
    deadline = time.time() + 300
    while not (ckpt / "last.pt").exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    step_at_kill = torch.load(ckpt / "last.pt", weights_only=True)["step"]
    assert 1 <= step_at_kill < 32
    assert _run([str(ckpt), "1", str(tmp_path / "resumed.pt")]).wait() == 0
    assert ref.wait() == 0
    a, b = torch.load(tmp_path / "ref.pt"), torch.load(tmp_path / "resumed.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from rgops.config import load_params
        from rgops.training import load_preset, model_config, train_cae
        from tests.conftest import make_training_datasets

        ds = make_training_datasets(n=24)
        fields, tcfg = load_preset(load_params(str(ROOT / "params.yaml")), "cae", "tiny")
        res = train_cae(ds, model_config("cae", ds, fields), tcfg, device="cpu",
                        checkpoint_dir=Path(out) / "ckpt")
        torch.save({"state": res.module.state_dict(), "steps": res.steps, "metrics": res.metrics},
                   Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_ddp_on_cpu(tmp_path):
    port = free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    # 16 train rows, global batch 8 -> 4 rows a rank a step, 2 steps an epoch, 2 epochs
    assert r0["steps"] == r1["steps"] == 4
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k  # gradients were all-reduced
    assert (tmp_path / "ckpt" / "last.pt").is_file()  # rank 0 checkpoints
    ckpt = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    torch.manual_seed(0)  # the initialisation both ranks started from
    init = ConditionalAE(from_dict(CAEConfig, ckpt["model_config"])).state_dict()
    assert any(not torch.equal(v, r0["state"][k]) for k, v in init.items())  # and it trained
