"""Training batches that are padded only to their own longest sequence.

- `FTDataset`: one example (`files.read_encoded`) -> input ids, next-token labels and the loss mask
  (upstream's rule).
- `collate`: right-pads a batch to ITS longest sequence.
- `BucketBatchSampler`: seeded, length-bucketed, shuffled batches of similar lengths; under
  torchrun each rank takes a disjoint slice of every global batch, and every rank gets the
  same number of steps.
"""

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)


class FTDataset(torch.utils.data.Dataset):
    """Fine-tuning examples as (input, next-token labels, loss mask), upstream's `FT_Dataset` rule
    without its padding to seq_len:

        input     = (context + completion)[:seq_len]                     length n
        labels[t] = input[t + 1] for t < n - 1; labels[n - 1] = 0
        clm:  loss_mask[t] = 1 where labels[t] is a completion token (len(context) - 1 <= t < n - 1)
        jlm:  loss_mask[t] = 1 for every t < n - 1

    A sequence longer than seq_len keeps its first seq_len tokens, as upstream does; upstream's last
    label is then the cut-off next token, masked out, here 0 and masked out (same loss).
    """

    def __init__(self, examples, seq_len, joint_lm=False):
        if seq_len < 2:
            raise ValueError(f"seq_len must be at least 2, got {seq_len}")
        self.examples = examples
        self.seq_len = seq_len
        self.joint_lm = joint_lm
        full = [len(c) + len(t) for c, t in examples]
        self._lengths = [min(n, seq_len) for n in full]
        self.n_truncated = sum(n > seq_len for n in full)
        if self.n_truncated:
            logger.warning(
                "%d of %d sequences are longer than seq_len=%d: kept their first %d tokens (longest: %d)",
                self.n_truncated,
                len(examples),
                seq_len,
                seq_len,
                max(full),
            )

    def __len__(self):
        return len(self.examples)

    def lengths(self):
        return list(self._lengths)

    def loss_tokens(self):
        """Per example, the positions that carry a loss (the ``loss_mask`` sum of ``__getitem__``)."""
        if self.joint_lm:
            return [max(n - 1, 0) for n in self._lengths]
        return [max(n - 1 - max(len(c) - 1, 0), 0) for n, (c, _) in zip(self._lengths, self.examples)]

    def __getitem__(self, i):
        context, completion = self.examples[i]
        input_ids = (context + completion)[: self.seq_len]
        n = len(input_ids)
        start = 0 if self.joint_lm else max(len(context) - 1, 0)
        return dict(
            input_ids=input_ids,
            labels=input_ids[1:] + [0],
            loss_mask=[1.0 if start <= t < n - 1 else 0.0 for t in range(n)],
        )


def collate(batch, pad_id=0):
    """Right-pad to the longest sequence of this batch: input_ids (B, T) with pad_id, labels
    (B, T) with 0, loss_mask (B, T) with 0.0."""
    if not batch:
        raise ValueError("collate: empty batch")
    T = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    labels = torch.zeros((len(batch), T), dtype=torch.long)
    loss_mask = torch.zeros((len(batch), T), dtype=torch.float)
    for b, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[b, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
        labels[b, :n] = torch.tensor(item["labels"], dtype=torch.long)
        loss_mask[b, :n] = torch.tensor(item["loss_mask"], dtype=torch.float)
    return dict(input_ids=input_ids, labels=labels, loss_mask=loss_mask)


class BucketBatchSampler:
    """Batches of dataset indices for THIS rank; use as `DataLoader(batch_sampler=...)`.

    Global batches (batch_size * world_size examples) depend only on the lengths, the global
    batch size, seed and epoch, never on world_size, so 1 rank x 8 sees the same global batches as
    2 ranks x 4; rank r takes slice r of each. With shuffle: permute the indices (RNG seeded by
    (seed, epoch)), cut into chunks of `chunk_batches` global batches, sort each chunk by length,
    cut it into global batches, permute the batch order. Without shuffle: index order, no sorting.

    The n % global_batch left-over examples form one smaller global batch, split as evenly as
    possible (slices differ by at most one example). If it has fewer examples than there are
    ranks, it is merged into the batch before it instead, so that no rank gets an empty batch (in
    that case only, global batches depend on world_size). Every rank gets `len(self)` batches.

    Finishing an epoch moves to the next one (set_epoch is then optional). `state_dict()["step"]`
    counts batches handed out this epoch; a DataLoader with workers takes batches ahead of the
    training loop, so a trainer that checkpoints mid-epoch should store the number of batches it
    consumed as "step" (load_state_dict accepts that).
    """

    def __init__(self, lengths, batch_size, world_size=1, rank=0, seed=0, shuffle=True, chunk_batches=100):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or chunk_batches < 1:
            raise ValueError(
                f"need batch_size >= 1, world_size >= 1, 0 <= rank < world_size, chunk_batches >= 1; "
                f"got {batch_size}, {world_size}, {rank}, {chunk_batches}"
            )
        if len(lengths) < world_size:
            raise ValueError(f"{len(lengths)} examples cannot give each of {world_size} ranks a batch")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.chunk_batches = chunk_batches
        self.global_batch_size = batch_size * world_size
        self.epoch = 0
        self.step = 0

    def __len__(self):
        n, G = len(self.lengths), self.global_batch_size
        tail = n % G
        return -(-n // G) - (1 if 0 < tail < self.world_size and n > G else 0)

    def set_epoch(self, epoch):
        if epoch != self.epoch:
            self.epoch = epoch
            self.step = 0

    def global_batches(self, epoch=None):
        """All global batches of `epoch` (default: the current one), as index arrays, in order."""
        epoch = self.epoch if epoch is None else epoch
        n, G = len(self.lengths), self.global_batch_size
        if not self.shuffle:
            batches = [np.arange(s, min(s + G, n)) for s in range(0, n, G)]
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            chunk = G * self.chunk_batches
            batches = []
            for s in range(0, n, chunk):
                idx = order[s : s + chunk]
                idx = idx[np.argsort(self.lengths[idx], kind="stable")]
                batches += [idx[i : i + G] for i in range(0, len(idx), G)]
            batches = [batches[i] for i in rng.permutation(len(batches))]
        small = [k for k, b in enumerate(batches) if len(b) < G]
        if small and len(batches) > 1 and len(batches[small[0]]) < self.world_size:
            k = small[0]
            other = k - 1 if k > 0 else 1
            batches[other] = np.concatenate([batches[other], batches[k]])
            del batches[k]
        return batches

    def __iter__(self):
        batches = self.global_batches()
        for k in range(self.step, len(batches)):
            self.step = k + 1
            yield np.array_split(batches[k], self.world_size)[self.rank].tolist()
        self.epoch += 1
        self.step = 0

    def state_dict(self):
        return {
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "n": len(self.lengths),
            "global_batch_size": self.global_batch_size,
            "shuffle": self.shuffle,
            "chunk_batches": self.chunk_batches,
        }

    def load_state_dict(self, d):
        """Resume where `d` was taken: the next `__iter__` skips the batches already consumed. Any
        world_size works as long as the global batch size is the same."""
        mine = self.state_dict()
        for key in ("seed", "n", "global_batch_size", "shuffle", "chunk_batches"):
            if key in d and d[key] != mine[key]:
                raise ValueError(f"sampler state has {key}={d[key]!r}, this sampler {key}={mine[key]!r}")
        if not 0 <= d["step"] <= len(self):
            raise ValueError(f"sampler state step={d['step']} is outside 0..{len(self)}")
        self.epoch = d["epoch"]
        self.step = d["step"]
