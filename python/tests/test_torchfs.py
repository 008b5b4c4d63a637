"""Tests of the torchfs Python package. The torch-free parts always run;
the DataLoader tests run when torch is importable (CI installs Debian's
CPU build). A fake mount (a directory with .torchfs/) records plans."""

import json
import os
import sys
import tempfile
import unittest
from unittest import mock

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import torchfs  # noqa: E402
from torchfs import plan as plan_mod  # noqa: E402

try:
    import torch  # noqa: F401

    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


def parse(data: bytes):
    head, _, body = data.decode().partition("\n\n")
    lines = head.split("\n")
    assert lines[0] == "torchfs-plan 1", lines
    hdr = dict(line.split(" ", 1) for line in lines[1:])
    items = body.split("\n")[:-1] if body else []
    assert int(hdr["items"]) == len(items)
    return int(hdr["epoch"]), int(hdr["rank"]), items


class FakeMount:
    """A directory that looks like a torchfs mount; records every plan."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name
        os.mkdir(os.path.join(self.root, ".torchfs"))
        with open(os.path.join(self.root, ".torchfs", "stats"), "w") as f:
            json.dump({"format": 1, "hits": 3, "tiers": {"memory": {"hits": 3}}}, f)
        self.plans = []
        self.patch = mock.patch.object(plan_mod, "_write", self._record)

    def _record(self, mount, data):
        assert mount == self.root
        self.plans.append(parse(data))

    def file(self, name, data=b"x"):
        path = os.path.join(self.root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def __enter__(self):
        self.patch.start()
        return self

    def __exit__(self, *exc):
        self.patch.stop()
        self.tmp.cleanup()


class ListSampler:
    """A torch-free sampler: a fresh shuffled order per iteration."""

    def __init__(self, n, seed=0):
        import random

        self.n = n
        self.rng = random.Random(seed)

    def __iter__(self):
        order = list(range(self.n))
        self.rng.shuffle(order)
        return iter(order)

    def __len__(self):
        return self.n


class FormatTest(unittest.TestCase):
    def test_format_matches_the_clients_format(self):
        data = torchfs.format_plan(3, 1, ["a/b.jpg", ("big.bin", 4096, 10), "t\tab%"])
        self.assertEqual(
            data,
            b"torchfs-plan 1\nepoch 3\nrank 1\nitems 3\n\n"
            b"a/b.jpg\nbig.bin\t4096\t10\nt%09ab%25\n",
        )
        self.assertEqual(torchfs.format_plan(0, 0, []), b"torchfs-plan 1\nepoch 0\nrank 0\nitems 0\n\n")

    def test_absolute_paths_become_relative_to_the_mount(self):
        data = torchfs.format_plan(0, 0, ["/m/x/y", ("/m/z", 0, 1)], mount="/m")
        self.assertEqual(parse(data)[2], ["x/y", "z\t0\t1"])
        with self.assertRaises(ValueError):
            torchfs.format_plan(0, 0, ["/elsewhere/y"], mount="/m")
        with self.assertRaises(ValueError):
            torchfs.format_plan(0, 0, [("/m/z", 0, 0)], mount="/m")

    def test_mount_is_found_from_a_path_and_stats_read(self):
        with FakeMount() as m:
            path = m.file("d/e/f.bin")
            self.assertEqual(torchfs.find_mount(path), m.root)
            self.assertEqual(torchfs.stats(m.root)["hits"], 3)
            d = torchfs.delta({"hits": 1, "tiers": {"memory": {"hits": 1}}}, torchfs.stats(m.root))
            self.assertEqual((d["hits"], d["tiers"]["memory"]["hits"]), (2, 2))
        with self.assertRaises(torchfs.NotATorchfsMount):
            torchfs.find_mount(tempfile.gettempdir())

    def test_a_rejected_plan_raises_with_the_reason(self):
        with FakeMount() as m:
            err = OSError(22, "Invalid argument")
            with mock.patch.object(plan_mod, "_write", side_effect=err):
                with open(os.path.join(m.root, ".torchfs", "stats"), "w") as f:
                    json.dump({"last_plan_error": "line 4: bad"}, f)
                with self.assertRaises(torchfs.PlanRejected) as cm:
                    torchfs.write_plan(m.root, 0, 0, ["a"])
                self.assertEqual(cm.exception.reason, "line 4: bad")


class SamplerWithoutTorchTest(unittest.TestCase):
    def test_publishes_this_and_the_next_epoch_before_yielding(self):
        with FakeMount() as m:
            files = [m.file(f"f{i}") for i in range(6)]
            s = torchfs.PlanSampler.for_files(ListSampler(6), files)
            first = list(s)
            self.assertEqual([p[:2] for p in m.plans], [(0, 0), (1, 0)])
            self.assertEqual(m.plans[0][2], [f"f{i}" for i in first])
            second = list(s)
            # Epoch 1 yields exactly the order published for it.
            self.assertEqual(m.plans[1][2], [f"f{i}" for i in second])
            self.assertEqual(m.plans[2][:2], (1, 0))
            self.assertEqual(m.plans[3][:2], (2, 0))
            self.assertEqual(sorted(second), list(range(6)))

    def test_not_a_mount_warns_once_and_still_yields(self):
        with tempfile.TemporaryDirectory() as d:
            files = [os.path.join(d, f"f{i}") for i in range(3)]
            s = torchfs.PlanSampler.for_files(ListSampler(3), files, lookahead=False)
            with self.assertWarns(UserWarning):
                self.assertEqual(sorted(s), [0, 1, 2])
            strict = torchfs.PlanSampler.for_files(ListSampler(3), files, strict=True)
            with self.assertRaises(torchfs.NotATorchfsMount):
                list(strict)


class ReadsFiles:
    """A map-style dataset reading one file per index."""

    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        with open(self.files[i], "rb") as f:
            return i, f.read()


@unittest.skipUnless(HAVE_TORCH, "torch is not installed")
class DataLoaderTest(unittest.TestCase):
    def test_distributed_sampler_with_workers_and_persistent_workers(self):
        from torch.utils.data import DataLoader, DistributedSampler

        with FakeMount() as m:
            files = [m.file(f"d/f{i}", bytes([i])) for i in range(20)]
            ds = ReadsFiles(files)
            dist = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=7)
            s = torchfs.PlanSampler.for_files(dist, files)
            self.assertEqual(s.rank, 1)
            loader = DataLoader(
                ds, batch_size=3, sampler=s, num_workers=2, persistent_workers=True,
                collate_fn=lambda batch: batch,
            )
            for epoch in range(3):
                s.set_epoch(epoch)
                seen = [i for batch in loader for (i, data) in batch]
                dist.set_epoch(epoch)
                self.assertEqual(seen, list(iter(dist)))
                published = [p for p in m.plans if p[0] == epoch]
                self.assertTrue(published, f"epoch {epoch} published")
                self.assertEqual(published[-1][1], 1)
                self.assertEqual(published[-1][2], [f"d/f{i}" for i in seen])
            self.assertEqual(m.plans[1][0], 1, "the next epoch is published early")

    def test_random_sampler_lookahead_yields_what_was_published(self):
        from torch.utils.data import DataLoader, RandomSampler

        with FakeMount() as m:
            files = [m.file(f"f{i}") for i in range(10)]
            ds = ReadsFiles(files)
            g = torch.Generator().manual_seed(1)
            s = torchfs.PlanSampler.for_files(RandomSampler(ds, generator=g), files, rank=0)
            loader = DataLoader(ds, batch_size=4, sampler=s, num_workers=2, collate_fn=lambda b: b)
            for epoch in range(2):
                seen = [i for batch in loader for (i, _) in batch]
                plan = [p for p in m.plans if p[0] == epoch][-1]
                self.assertEqual(plan[2], [f"f{i}" for i in seen])


if __name__ == "__main__":
    unittest.main()
