import numpy as np

from nanovl.engine.blocks import BlockManager
from nanovl.engine.request import GenerationRequest, SamplingParams
from nanovl.engine.scheduler import Scheduler, Sequence


def seq(rid, prompt_len):
    return Sequence(GenerationRequest(rid, np.zeros(prompt_len, np.int32), SamplingParams()))


def admitted(scheduler, *seqs):
    """Queue the sequences and run the first schedule() -> its step."""
    for s in seqs:
        scheduler.add(s)
    return scheduler.schedule()


def ran(*seqs, outputs=(1,)):
    """As the engine leaves sequences after a step: all cached, tokens appended."""
    for s in seqs:
        s.cached, s.output_ids = s.length, list(outputs)


def test_blocks_allocate_and_free():
    blocks = BlockManager(num_blocks=4, block_size=4)
    table = blocks.ensure(1, 6)
    assert len(table) == 2 and blocks.free_blocks == 2
    assert blocks.slots(1, 3, 6) == [table[0] * 4 + 3, table[1] * 4, table[1] * 4 + 1]
    assert blocks.can_hold(1, 16) and not blocks.can_hold(1, 17)
    blocks.free(1)
    assert blocks.free_blocks == 4 and blocks.usage == 0.0


def test_running_batch_is_bounded_and_requests_join_between_steps():
    scheduler = Scheduler(BlockManager(64, 16), max_running=2, max_step_tokens=1000)
    a, b, c = seq("a", 10), seq("b", 10), seq("c", 10)
    step = admitted(scheduler, a, b, c)
    assert step.prefills == [a, b] and step.decodes == []
    ran(a, b)
    a.finish_reason = "stop"
    assert scheduler.retire_finished() == [a]
    step = scheduler.schedule()
    assert step.decodes == [b] and step.prefills == [c]


def test_step_token_budget_defers_prefills_but_runs_a_huge_one_alone():
    scheduler = Scheduler(BlockManager(64, 16), max_running=8, max_step_tokens=100)
    big, small = seq("big", 300), seq("small", 50)
    assert admitted(scheduler, big, small).prefills == [big]      # alone, over the budget
    ran(big)
    step = scheduler.schedule()
    assert step.decodes == [big] and step.prefills == [small]


def test_out_of_blocks_preempts_the_newest_and_requeues_it():
    scheduler = Scheduler(BlockManager(3, 16), max_running=4, max_step_tokens=1000)
    a, b = seq("a", 15), seq("b", 14)
    assert admitted(scheduler, a, b).prefills == [a, b]          # 1 block each (+1 slot headroom), 1 left
    ran(a, b, outputs=(1, 2))   # both now need a second block
    step = scheduler.schedule()
    assert step.decodes == [a] and scheduler.waiting[0] is b and b.cached == 0


def test_remove_frees_blocks():
    blocks = BlockManager(8, 16)
    scheduler = Scheduler(blocks, max_running=4, max_step_tokens=1000)
    a = seq("a", 20)
    admitted(scheduler, a)
    assert blocks.free_blocks < 8
    assert scheduler.remove("a") == [a] and blocks.free_blocks == 8 and scheduler.idle
