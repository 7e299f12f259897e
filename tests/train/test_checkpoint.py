import json

import pytest

from tunehouse.errors import CheckpointError, DiskFull
from tunehouse.train import checkpoint as ck


def payload(tmp):
    (tmp / "weights.bin").write_bytes(b"x" * 1000)


def test_save_is_atomic_and_verifiable(tmp_path):
    path = ck.save_atomic(tmp_path, 5, payload, {"step": 5})
    assert path.name == "step-000005"
    assert ck.verify(path).step == 5
    assert json.loads((path / ck.MANIFEST).read_text())["files"]["weights.bin"]
    assert not list(tmp_path.glob("tmp-*"))


def test_failure_mid_write_leaves_nothing(tmp_path):
    def broken(tmp):
        payload(tmp)
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        ck.save_atomic(tmp_path, 7, broken, {})
    assert list(tmp_path.iterdir()) == []


def test_enospc_becomes_disk_full(tmp_path):
    import errno

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    ck.save_atomic(tmp_path, 1, payload, {})
    with pytest.raises(DiskFull):
        ck.save_atomic(tmp_path, 2, full, {})
    assert [p.name for p in tmp_path.iterdir()] == ["step-000001"]


def test_free_space_checked_first(tmp_path):
    with pytest.raises(DiskFull, match="Not enough disk space"):
        ck.save_atomic(tmp_path, 1, payload, {}, min_free_bytes=1 << 62)


def test_resume_skips_truncated_and_unfinished(tmp_path):
    ck.save_atomic(tmp_path, 2, payload, {"step": 2})
    bad = ck.save_atomic(tmp_path, 4, payload, {"step": 4})
    (bad / "weights.bin").write_bytes(b"x" * 10)  # truncated after the manifest
    (tmp_path / "tmp-abc").mkdir()  # a write that never finished
    (tmp_path / "step-000006").mkdir()  # no manifest
    warnings = []
    best = ck.latest_valid(tmp_path, warnings.append)
    assert best.step == 2
    assert len(warnings) == 3 and not (tmp_path / "tmp-abc").exists()
    with pytest.raises(CheckpointError):
        ck.verify(bad)


def test_prune_keeps_newest_and_protected(tmp_path):
    for s in range(1, 6):
        ck.save_atomic(tmp_path, s, payload, {})
    ck.prune(tmp_path, keep=2, protect={1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000001", "step-000004",
                                                          "step-000005"]


def test_optimizer_state_roundtrip():
    import torch

    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    tensors, meta = ck.flatten_optimizer(opt.state_dict())
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.1)
    opt2.load_state_dict(ck.unflatten_optimizer(tensors, json.loads(json.dumps(meta))))
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
