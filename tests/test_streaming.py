"""Streaming statistics: exact top-k and sums whatever the blocks, exact merges, state round trips,
and the `tally` loop resuming from its checkpoint without seeing an item twice."""

from __future__ import annotations

import pytest
import torch

from netanatomy import streaming
from netanatomy.cache import Checkpoint


def _feed(stat, values, indices=None, cuts=(0, 3, 10, 11, 25, 40)):
    for a, b in zip(cuts[:-1], cuts[1:]):
        stat.add(values[:, a:b], None if indices is None else indices[a:b])
    return stat


def test_topk_is_the_top_of_the_whole_stream():
    torch.manual_seed(0)
    values = torch.randn(4, 40)
    top = _feed(streaming.TopK(7), values)
    torch.testing.assert_close(top.values, torch.topk(values, 7, dim=1).values)
    assert top.count == 40
    # with indices, ties keep the lower index whatever the order of arrival
    tied = torch.tensor([[1.0, 5.0, 5.0, 2.0, 5.0, 0.0]])
    order = torch.tensor([4, 2, 0, 3, 1, 5])  # item i is stream position order[i]
    top = streaming.TopK(2, index=True)
    top.add(tied[:, :3], order[:3])
    top.add(tied[:, 3:], order[3:])
    assert top.values.tolist() == [[5.0, 5.0]] and top.indices.tolist() == [[0, 1]]


def test_merge_of_two_parts_equals_the_whole_and_state_round_trips():
    torch.manual_seed(1)
    values, ids = torch.randn(3, 40), torch.arange(40)
    parts = []
    for a, b in ((0, 17), (17, 40)):
        stats = streaming.Stats({"top": streaming.TopK(5, index=True), "sum": streaming.Sum()})
        stats["top"].add(values[:, a:b], ids[a:b])
        stats["sum"].add(values[:, a:b].sum(1))
        parts.append(stats)
    first, second = parts
    restored = streaming.Stats({"top": streaming.TopK(1, index=True), "sum": streaming.Sum()})
    restored.load_state_dict(first.state_dict())
    restored.merge(second)
    expect = torch.topk(values, 5, dim=1)
    torch.testing.assert_close(restored["top"].values, expect.values)
    assert torch.equal(restored["top"].indices, expect.indices) and restored["top"].count == 40
    torch.testing.assert_close(restored["sum"].total, values.double().sum(1))


class _Items(torch.utils.data.Dataset):
    def __len__(self):
        return 23

    def __getitem__(self, i):
        return torch.tensor([float(i)])


def test_tally_resumes_from_its_checkpoint(tmp_path):
    seen = []

    def run(stat, checkpoint, stop_after=None):
        for n, batch in enumerate(streaming.tally(stat, _Items(), checkpoint, batch_size=4, checkpoint_every=2,
                                                  progress=False), start=1):
            seen.extend(batch[:, 0].tolist())
            stat.add(batch.sum())
            if n == stop_after:
                raise KeyboardInterrupt

    checkpoint = Checkpoint(tmp_path / "ckpt.pt")
    stat = streaming.Sum()
    with pytest.raises(KeyboardInterrupt):
        run(stat, checkpoint, stop_after=5)  # checkpoints after batches 2 and 4 (16 items)
    assert checkpoint.load()["done"] == 16
    seen.clear()
    resumed = streaming.Sum()
    run(resumed, checkpoint)
    assert checkpoint.load()["done"] == 16  # a checkpoint is saved only before the end
    assert seen == [float(i) for i in range(16, 23)]  # only the items after the checkpoint
    assert resumed.total.item() == sum(range(23))  # the state saved before plus the rest
