"""The scheduler alone: admission, the batch cap, groups taking turns, cancel. No tensors involved."""

from app.engine.scheduler import Scheduler, Ticket


def tickets(job, n, group="g", cost=1, start=0):
    return [Ticket(row_id=start + i, job_id=job, group=group, cost=cost) for i in range(n)]


def test_waiting_rows_join_the_running_batch_up_to_the_cap():
    s = Scheduler(max_batch=4)
    s.add(tickets("a", 3))
    batch, admitted = s.schedule()
    assert [t.row_id for t in batch] == [0, 1, 2] and len(admitted) == 3
    s.add(tickets("b", 3, start=10))
    batch, admitted = s.schedule()
    assert [t.row_id for t in admitted] == [10]  # one free slot
    assert {t.job_id for t in batch} == {"a", "b"}
    s.update([0, 1])
    batch, admitted = s.schedule()
    assert [t.row_id for t in admitted] == [11, 12]
    assert len(batch) == 4


def test_guided_rows_cost_two_network_rows():
    s = Scheduler(max_batch=4)
    s.add(tickets("a", 3, cost=2))
    batch, _ = s.schedule()
    assert len(batch) == 2


def test_a_row_larger_than_the_cap_still_runs_alone():
    s = Scheduler(max_batch=1)
    s.add(tickets("a", 2, cost=2))
    batch, _ = s.schedule()
    assert len(batch) == 1


def test_groups_of_different_shapes_take_turns():
    s = Scheduler(max_batch=8)
    s.add(tickets("a", 2, group="small") + tickets("b", 2, group="large", start=5))
    seen = [s.schedule()[0][0].group for _ in range(4)]
    assert seen == ["small", "large", "small", "large"]


def test_cancel_removes_waiting_and_running_rows_of_that_job_only():
    s = Scheduler(max_batch=2)
    s.add(tickets("a", 3) + tickets("b", 1, start=9))
    s.schedule()
    dropped = s.cancel("a")
    assert sorted(dropped) == [0, 1, 2]
    batch, _ = s.schedule()
    assert [t.job_id for t in batch] == ["b"]


def test_fifo_admission_never_skips_an_accepted_row():
    s = Scheduler(max_batch=2)
    s.add(tickets("a", 5))
    finished = []
    while not s.idle:
        batch, _ = s.schedule()
        s.update([t.row_id for t in batch])
        finished += [t.row_id for t in batch]
    assert finished == [0, 1, 2, 3, 4]
