"""Prefix caching and forked choices in the block manager and the scheduler: pure Python, no torch."""
import numpy as np
import pytest

from nanovl.engine.blocks import BlockManager
from nanovl.engine.prefix import block_hashes, prompt_extra_ids
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.engine.scheduler import Scheduler, Sequence

VOCAB = 1000


def seq(rid, ids, *, extra=None, salt=None, n=1, table=None):
    request = GenerationRequest(rid, np.asarray(ids, np.int32), SamplingParams(n=n), prompt_table=table,
                                prompt_extra_ids=None if extra is None else np.asarray(extra, np.int64),
                                cache_salt=salt)
    return Sequence(request)


def run_prefill(scheduler, s):
    """Admits s, and leaves it as the engine does after its forward: KV written, a token out."""
    scheduler.add(s)
    step = scheduler.schedule()
    assert s in step.prefills
    s.cached = s.length
    scheduler.written(s)
    s.output_ids.append(7)
    return step


def finish(scheduler, s):
    s.finish_reason = "stop"
    scheduler.retire_finished()


def test_a_repeated_prompt_reuses_its_full_blocks_and_recomputes_the_last_token():
    blocks = BlockManager(16, 4)
    scheduler = Scheduler(blocks, max_running=4, max_step_tokens=1000, vocab_size=VOCAB)
    first = seq("a", range(10))
    run_prefill(scheduler, first)
    finish(scheduler, first)
    assert blocks.cached_blocks == 2 and blocks.free_blocks == 16   # kept, yet free to take
    allocated = blocks.allocated
    again = seq("b", range(10))
    run_prefill(scheduler, again)
    assert again.cached_tokens == 8                  # two full blocks; tokens 8, 9 ran
    assert blocks.allocated - allocated == 1         # only the partial block is new
    exact = seq("c", range(8))                       # a prompt of whole blocks: its last one runs again
    run_prefill(scheduler, exact)
    assert exact.cached_tokens == 4
    assert (blocks.queried_tokens, blocks.hit_tokens) == (28, 12)


def test_same_size_images_with_different_content_never_share_a_block():
    image = [VOCAB + i for i in range(8)]
    a = block_hashes(np.array(image), np.full(8, 11), 4, salt=None)
    b = block_hashes(np.array(image), np.full(8, 12), 4, salt=None)
    assert not set(a) & set(b)
    assert block_hashes(np.array(image), np.full(8, 11), 4, salt=None) == a


def test_a_request_without_extra_ids_keys_its_image_rows_by_its_table():
    ids = [1, 2, VOCAB, VOCAB + 1]
    one = prompt_extra_ids(seq("a", ids, table=np.ones((2, 3))).request, VOCAB)
    two = prompt_extra_ids(seq("b", ids, table=np.zeros((2, 3))).request, VOCAB)
    assert list(one[:2]) == [0, 0] and one[2] == one[3] != 0 and one[2] != two[2]


def test_cache_salt_separates_and_the_same_salt_shares():
    def hit(salt_a, salt_b):
        scheduler = Scheduler(BlockManager(16, 4), max_running=4, max_step_tokens=1000, vocab_size=VOCAB)
        a = seq("a", range(12), salt=salt_a)
        run_prefill(scheduler, a)
        b = seq("b", range(12), salt=salt_b)
        run_prefill(scheduler, b)
        return b.cached_tokens
    assert hit("tenant-1", "tenant-2") == 0 and hit(None, "tenant-2") == 0
    assert hit("tenant-1", "tenant-1") == 8 and hit(None, None) == 8


def test_decode_blocks_are_cached_for_the_next_turn():
    blocks = BlockManager(16, 4)
    scheduler = Scheduler(blocks, max_running=4, max_step_tokens=1000, vocab_size=VOCAB)
    turn1 = seq("a", range(6))
    run_prefill(scheduler, turn1)
    for token in (8, 9, 10):      # three decode steps: positions 6..8 written
        scheduler.schedule()
        turn1.cached = turn1.length
        scheduler.written(turn1)
        turn1.output_ids.append(token)
    finish(scheduler, turn1)
    turn2 = seq("b", list(range(6)) + [7, 8, 9, 10, 50, 51])
    run_prefill(scheduler, turn2)
    assert turn2.cached_tokens == 8


def test_unreferenced_cached_blocks_are_evicted_least_recently_used_first():
    blocks = BlockManager(4, 4)
    scheduler = Scheduler(blocks, max_running=4, max_step_tokens=1000, vocab_size=VOCAB)
    for rid, start in (("a", 0), ("b", 100)):
        s = seq(rid, range(start, start + 5))
        run_prefill(scheduler, s)
        finish(scheduler, s)
    assert blocks.cached_blocks == 2
    c = seq("c", range(200, 210))   # needs 3 blocks: 2 free ones, then the oldest cached one (a's)
    run_prefill(scheduler, c)
    assert blocks.cached_blocks == 1
    finish(scheduler, c)
    assert run_prefill(scheduler, seq("d", range(100, 105))) and scheduler.running[-1].cached_tokens == 4
    assert run_prefill(scheduler, seq("e", range(0, 5))) and scheduler.running[-1].cached_tokens == 0


def test_fork_shares_the_prompts_full_blocks_once():
    blocks = BlockManager(32, 4)
    scheduler = Scheduler(blocks, max_running=8, max_step_tokens=1000, vocab_size=VOCAB)
    parent = seq("a", range(10), n=4)
    run_prefill(scheduler, parent)
    children = scheduler.fork(parent)
    assert [c.index for c in children] == [1, 2, 3] and list(scheduler.waiting) == children
    assert all(c.cached == 8 and blocks.tables[c.key] == blocks.tables[parent.key][:2] for c in children)
    allocated = blocks.allocated
    step = scheduler.schedule()
    assert step.prefills == children and step.decodes == [parent]
    assert blocks.allocated - allocated == 3   # each child's own partial block, nothing of the prompt
    for c in children:
        c.cached = c.length
    parent.finish_reason = "stop"
    scheduler.retire_finished()
    assert blocks.tables[children[0].key][:2] == blocks.tables[children[1].key][:2]   # still held by them


@pytest.mark.parametrize("caching", [True, False])
def test_preempted_forked_choices_free_only_their_share(caching):
    blocks = BlockManager(6, 4, caching=caching)
    scheduler = Scheduler(blocks, max_running=8, max_step_tokens=1000, vocab_size=VOCAB)
    parent = seq("a", range(9), n=2)
    run_prefill(scheduler, parent)
    (child,) = scheduler.fork(parent)
    scheduler.schedule()
    child.cached = child.length
    child.output_ids.append(5)
    parent.output_ids += [5] * 11   # the parent grows past the free blocks: the newest (the child) is preempted
    parent.cached = parent.length - 1
    scheduler.schedule()
    assert scheduler.waiting[0] is child and child.key not in blocks.tables and child.cached == 0
    assert len(blocks.tables[parent.key]) == 6 and blocks.free_blocks == 0   # the shared two are the parent's alone
