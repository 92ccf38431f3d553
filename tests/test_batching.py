"""Batching: upstream's example rule, per-batch padding, and the length-bucketed sampler."""

import json
import logging

import numpy as np
import pytest
import torch

from lora_nlg.data import prepare
from lora_nlg.data import raw as D
from lora_nlg.data.batching import BucketBatchSampler, FTDataset, collate
from lora_nlg.data.files import read_encoded, read_unique
from lora_nlg.data.tokenizer import GPT2Tokenizer

# --- upstream's FT_Dataset (microsoft/LoRA examples/NLG/src/data_utils.py), re-typed ----------


def _seed_padding_tokens(tokens, max_seq_length, pad_token, direct):
    pad_tokens = tokens[:max_seq_length] if direct > 0 else tokens[-max_seq_length:]
    pad_tokens = list(pad_tokens) if len(tokens) > max_seq_length else list(tokens)
    token_len = len(pad_tokens)
    return pad_tokens + [pad_token] * (max_seq_length - token_len), token_len


def seed_item(context, completion, max_seq_length, joint_lm):
    _input, _input_len = _seed_padding_tokens(context + completion, max_seq_length, 0, 1)
    _target, _ = _seed_padding_tokens((context + completion)[1:], max_seq_length, 0, 1)
    if not joint_lm:
        _msk = [0.0] * (len(context) - 1) + [1.0] * (_input_len - len(context))
    else:
        _msk = [1.0] * (_input_len - 1)
    _msk, _ = _seed_padding_tokens(_msk, max_seq_length, 0.0, 1)
    return _input, _target, _msk


def random_examples(n, seed=0, max_context=30, max_completion=40):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.integers(0, 50256, rng.integers(1, max_context)).tolist() + [50256],
            rng.integers(0, 50256, rng.integers(0, max_completion)).tolist() + [50256],
        )
        for _ in range(n)
    ]


@pytest.mark.parametrize("joint_lm", [False, True])
@pytest.mark.parametrize("seq_len", [16, 40, 512])
def test_items_follow_the_seed_rule(joint_lm, seq_len):
    examples = random_examples(300, seed=seq_len)
    ds = FTDataset(examples, seq_len, joint_lm=joint_lm)
    for (context, completion), item, n in zip(examples, ds, ds.lengths()):
        s_input, s_target, s_mask = seed_item(context, completion, seq_len, joint_lm)
        assert len(item["input_ids"]) == len(item["labels"]) == len(item["loss_mask"]) == n
        assert n == min(len(context) + len(completion), seq_len)
        assert item["input_ids"] == s_input[:n] and set(s_input[n:]) <= {0}
        assert item["labels"][:-1] == s_target[: n - 1] and item["labels"][-1] == 0
        assert item["loss_mask"] == s_mask[:n] and set(s_mask[n:]) <= {0.0}
        assert item["loss_mask"][-1] == 0.0
        if not joint_lm:  # mask 1 exactly where the label is a completion token
            full = context + completion
            want = [1.0 if len(context) <= t + 1 < n else 0.0 for t in range(n)]
            assert item["loss_mask"] == want
            assert [lab for lab, m in zip(item["labels"], item["loss_mask"]) if m] == full[len(context) : n]


def test_truncation_is_counted_and_reported_once(caplog):
    examples = [([1, 2, 3], [4, 5]), ([1] * 10, [2] * 10), ([1] * 30, [2]), ([7], [8])]
    with caplog.at_level(logging.WARNING, logger="lora_nlg.data.batching"):
        ds = FTDataset(examples, seq_len=8)
        _ = [ds[i] for i in range(len(ds))]
    assert ds.n_truncated == 2
    assert ds.lengths() == [5, 8, 8, 2]
    records = [r for r in caplog.records if r.name == "lora_nlg.data.batching"]
    assert len(records) == 1 and "2 of 4 sequences are longer than seq_len=8" in records[0].getMessage()
    # The context alone fills seq_len: nothing to learn from, mask all zero.
    assert ds[2]["loss_mask"] == [0.0] * 8
    assert ds[1]["input_ids"] == [1] * 8 and ds[1]["loss_mask"] == [0.0] * 8
    with pytest.raises(ValueError, match="seq_len"):
        FTDataset(examples, seq_len=1)


def test_collate_pads_to_the_longest_in_the_batch():
    ds = FTDataset([([1, 2], [3, 50256]), ([5, 6, 7, 8, 9], [10, 50256]), ([11], [12])], seq_len=512)
    batch = collate([ds[0], ds[1], ds[2]], pad_id=50256)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["loss_mask"].shape == (3, 7)
    assert batch["input_ids"].dtype == torch.long and batch["loss_mask"].dtype == torch.float
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 50256, 50256, 50256, 50256],
        [5, 6, 7, 8, 9, 10, 50256],
        [11, 12, 50256, 50256, 50256, 50256, 50256],
    ]
    assert batch["labels"].tolist() == [[2, 3, 50256, 0, 0, 0, 0], [6, 7, 8, 9, 10, 50256, 0], [12, 0, 0, 0, 0, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0], [1, 0, 0, 0, 0, 0, 0]]
    assert collate([ds[2]])["input_ids"].shape == (1, 2)
    with pytest.raises(ValueError):
        collate([])


def test_dataloader_end_to_end():
    examples = random_examples(50)
    ds = FTDataset(examples, 64)
    sampler = BucketBatchSampler(ds.lengths(), batch_size=4, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    seen = []
    for batch in loader:
        assert batch["input_ids"].shape[1] == int((batch["loss_mask"].shape[1]))
        seen.append(batch["input_ids"].shape[0])
    assert sum(seen) == 50 and len(seen) == len(sampler) == 13
    assert sampler.state_dict()["epoch"] == 1  # a finished epoch moves to the next


# --- read_encoded / read_unique ---------------------------------------------------------------


def write_lines(path, lines_):
    path.write_text("".join(line + "\n" for line in lines_), encoding="utf-8")
    return path


def test_read_encoded(tmp_path):
    path = write_lines(
        tmp_path / "e.jsonl",
        ['{"context": [1, 50256], "completion": [2, 3, 50256]}', "", '{"context": [4, 50256], "completion": [50256]}'],
    )
    assert read_encoded(path) == [([1, 50256], [2, 3, 50256]), ([4, 50256], [50256])]


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"context": [1], "completion": [2]', r"e.jsonl:2: malformed JSON"),
        ('{"context": [1]}', r"e.jsonl:2: missing field 'completion'"),
        (
            '{"context": [1, "2"], "completion": [2]}',
            r"e.jsonl:2: field 'context' must be a non-empty list of token ids",
        ),
        ('{"context": [1], "completion": []}', r"e.jsonl:2: field 'completion' must be a non-empty list"),
        ('{"context": [1], "completion": [-3]}', r"e.jsonl:2: field 'completion' must be"),
        ('{"context": [1], "completion": [true]}', r"e.jsonl:2: field 'completion' must be"),
        ("[1, 2]", r"e.jsonl:2: expected a JSON object"),
    ],
)
def test_read_encoded_errors(tmp_path, line, message):
    path = write_lines(tmp_path / "e.jsonl", ['{"context": [1], "completion": [2]}', line])
    with pytest.raises(ValueError, match=message):
        read_encoded(path)


def test_read_unique(tmp_path):
    good = {
        "id": 0,
        "context": "a : b",
        "context_ids": [64, 50256],
        "references": ["x", "y"],
        "category": "Food",
        "seen": True,
    }
    path = write_lines(tmp_path / "u.jsonl", [json.dumps(good)])
    assert read_unique(path) == [good]
    for field, value, message in (
        ("references", [], "a non-empty list of strings"),
        ("id", "0", "an int"),
        ("context_ids", [], "a non-empty list of token ids"),
    ):
        bad = dict(good, **{field: value})
        write_lines(path, [json.dumps(good), json.dumps(bad)])
        with pytest.raises(ValueError, match=rf"u.jsonl:2: field '{field}' must be {message}"):
            read_unique(path)
    write_lines(path, [json.dumps({k: v for k, v in good.items() if k != "context"})])
    with pytest.raises(ValueError, match=r"u.jsonl:1: missing field 'context'"):
        read_unique(path)


# --- BucketBatchSampler -----------------------------------------------------------------------


def all_rank_batches(lengths, batch_size, world_size, **kw):
    samplers = [BucketBatchSampler(lengths, batch_size, world_size, r, **kw) for r in range(world_size)]
    return samplers, [list(s) for s in samplers]


@pytest.mark.parametrize("n", [1, 7, 64, 101, 1000, 1003])
@pytest.mark.parametrize("world_size,batch_size", [(1, 8), (2, 4), (3, 3), (4, 2), (8, 1), (2, 1)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_disjoint_cover_and_equal_steps(n, world_size, batch_size, shuffle):
    if n < world_size:
        with pytest.raises(ValueError, match="cannot give each"):
            BucketBatchSampler(list(range(n)), batch_size, world_size, 0)
        return
    lengths = np.random.default_rng(n).integers(1, 200, n).tolist()
    samplers, per_rank = all_rank_batches(lengths, batch_size, world_size, seed=5, shuffle=shuffle, chunk_batches=4)
    steps = {len(b) for b in per_rank}
    assert steps == {len(samplers[0])}  # every rank the same number of steps, = len()
    flat = [i for batches in per_rank for batch in batches for i in batch]
    assert sorted(flat) == list(range(n))  # disjoint and covering
    for k in range(len(samplers[0])):
        sizes = [len(per_rank[r][k]) for r in range(world_size)]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        assert max(sizes) <= batch_size + 1
    if shuffle is False:
        assert [i for k in range(len(samplers[0])) for r in range(world_size) for i in per_rank[r][k]] == list(range(n))


@pytest.mark.parametrize("n", [64, 1000, 1003, 1005])
def test_global_batches_do_not_depend_on_world_size(n):
    """1 rank x batch 8 == 2 ranks x 4 == 4 ranks x 2 == 8 ranks x 1, step by step (as long as the
    left-over batch has at least one example per rank: n % 8 == 0 or >= world_size)."""
    lengths = np.random.default_rng(0).integers(1, 300, n).tolist()
    _, single = all_rank_batches(lengths, 8, 1, seed=11)
    for world_size in (2, 4, 8):
        if 0 < n % 8 < world_size:
            continue
        _, per_rank = all_rank_batches(lengths, 8 // world_size, world_size, seed=11)
        merged = [[i for r in range(world_size) for i in per_rank[r][k]] for k in range(len(per_rank[0]))]
        assert merged == single[0]
        for r in range(world_size):  # rank r takes slice r of each global batch
            assert per_rank[r][0] == single[0][0][r * (8 // world_size) : (r + 1) * (8 // world_size)]


def test_small_left_over_batch_is_merged_so_no_rank_is_empty():
    # 1,005 = 125 * 8 + 5; with 8 ranks the 5 left-over examples cannot reach all ranks.
    lengths = list(range(1005))
    samplers, per_rank = all_rank_batches(lengths, 1, 8, seed=0)
    assert len(samplers[0]) == 125
    assert all(len(b) >= 1 for batches in per_rank for b in batches)
    assert sorted(i for batches in per_rank for b in batches for i in b) == lengths
    # With 4 ranks (5 >= 4) the 5 form their own, smaller global batch.
    samplers, per_rank = all_rank_batches(lengths, 2, 4, seed=0)
    assert len(samplers[0]) == 126
    assert sorted(len(b) for b in (per_rank[r][k] for r in range(4) for k in range(126)))[:4] == [1, 1, 1, 2]


def test_seeded_shuffled_and_bucketed():
    lengths = np.random.default_rng(1).integers(5, 300, 4000).tolist()
    a = list(BucketBatchSampler(lengths, 8, seed=1))
    b = list(BucketBatchSampler(lengths, 8, seed=1))
    c = list(BucketBatchSampler(lengths, 8, seed=2))
    assert a == b and a != c
    s = BucketBatchSampler(lengths, 8, seed=1)
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != a and sorted(map(tuple, e1)) != sorted(map(tuple, a))
    s.set_epoch(0)
    assert list(s) == a
    # Bucketing: far less padding than random batches of the same size.
    lens = np.asarray(lengths)

    def padding(batches):
        return sum(len(bt) * lens[bt].max() - lens[bt].sum() for bt in batches) / sum(
            len(bt) * lens[bt].max() for bt in batches
        )

    rng = np.random.default_rng(0)
    random_batches = np.array_split(rng.permutation(len(lengths)), len(lengths) // 8)
    assert padding(a) < 0.05 < 0.3 < padding(random_batches)
    # Batch order is shuffled: not sorted by length across the epoch.
    maxima = [lens[bt].max() for bt in a]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_without_shuffle_order_is_kept():
    s = BucketBatchSampler([5, 1, 4, 2, 3], batch_size=2, shuffle=False)
    assert list(s) == [[0, 1], [2, 3], [4]]
    assert list(s) == [[0, 1], [2, 3], [4]]  # every epoch


def test_resume_mid_epoch_exactly():
    lengths = np.random.default_rng(2).integers(1, 100, 403).tolist()
    full = BucketBatchSampler(lengths, 4, world_size=2, rank=1, seed=9)
    full.set_epoch(3)
    want = list(full)
    s = BucketBatchSampler(lengths, 4, world_size=2, rank=1, seed=9)
    s.set_epoch(3)
    it = iter(s)
    got = [next(it) for _ in range(17)]
    state = s.state_dict()
    assert (state["epoch"], state["step"]) == (3, 17)
    resumed = BucketBatchSampler(lengths, 4, world_size=2, rank=1, seed=9)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.set_epoch(3)  # a trainer that calls set_epoch again must not lose the position
    got += list(resumed)
    assert got == want
    assert resumed.state_dict()["epoch"] == 4 and resumed.state_dict()["step"] == 0
    # Same global batch on another number of ranks: resumes the same global batches.
    single = BucketBatchSampler(lengths, 8, seed=9)
    single.load_state_dict(state)
    rest = list(single)
    assert [np.array_split(b, 2)[1].tolist() for b in rest] == want[17:]


def test_load_state_dict_refuses_a_different_setup():
    s = BucketBatchSampler(list(range(100)), 4, seed=1)
    state = s.state_dict()
    with pytest.raises(ValueError, match="global_batch_size"):
        BucketBatchSampler(list(range(100)), 8, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        BucketBatchSampler(list(range(100)), 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="step"):
        s.load_state_dict(dict(state, step=26))
    with pytest.raises(ValueError):
        BucketBatchSampler(list(range(10)), 4, world_size=2, rank=2)


def test_real_e2e_valid_padding(tmp_path, mirror):
    """On E2E valid, encoded for real: bucketed batches of 8 waste little; upstream's 512 wastes most."""
    tok = GPT2Tokenizer.from_dir(mirror / "gpt2-vocab")
    prepare.write_split(tmp_path, "valid", D.read_e2e_csv(mirror / "e2e" / "devset.csv"), tok)
    ds = FTDataset(read_encoded(tmp_path / "valid.jsonl"), seq_len=512)
    assert len(ds) == 4672 and ds.n_truncated == 0
    sampler = BucketBatchSampler(ds.lengths(), 8, seed=0)
    real = padded = 0
    for indices in sampler:
        batch = collate([ds[i] for i in indices])
        real += sum(ds.lengths()[i] for i in indices)
        padded += batch["input_ids"].numel()
    assert padded >= real and (padded - real) / padded < 0.03
    assert 1 - real / (512 * len(ds)) > 0.85
