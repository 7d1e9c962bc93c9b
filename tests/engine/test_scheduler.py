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


def test_jobs_take_turns_at_admission_so_a_late_small_job_is_not_queued_behind_a_big_one():
    s = Scheduler(max_batch=2)
    s.add(tickets("big", 10))
    s.schedule()  # rows 0, 1 of the big job run
    s.add(tickets("small", 1, start=100))
    s.update([0])
    _, admitted = s.schedule()
    assert [t.job_id for t in admitted] == ["small"]  # not row 2 of the big job


def test_the_pixel_cap_bounds_a_pass_but_a_huge_row_still_runs_alone():
    s = Scheduler(max_batch=64, max_pixels=1000)
    s.add([Ticket(i, "a", "g", pixels=400) for i in range(5)])
    batch, _ = s.schedule()
    assert len(batch) == 2
    t = Scheduler(max_batch=64, max_pixels=1000)
    t.add([Ticket(0, "a", "g", pixels=5000)])
    assert len(t.schedule()[0]) == 1


def test_groups_share_the_device_by_pass_time_not_by_turns():
    s = Scheduler(max_batch=8)
    s.add(tickets("slow", 2, group="tiles") + tickets("fast", 2, group="digits", start=10))
    seen = []
    for _ in range(12):
        batch, _ = s.schedule()
        group = batch[0].group
        seen.append(group)
        s.update([], seconds=1.0 if group == "tiles" else 0.1)  # a tile pass costs ten digit passes
    assert seen.count("digits") >= 10 and seen.count("tiles") <= 2


def test_a_group_that_joins_late_starts_level_with_the_others():
    s = Scheduler(max_batch=8)
    s.add(tickets("old", 1, group="a"))
    for _ in range(5):
        s.schedule()
        s.update([], seconds=1.0)
    s.add(tickets("new", 1, group="b", start=10))
    seen = []
    for _ in range(4):
        batch, _ = s.schedule()
        seen.append(batch[0].group)
        s.update([], seconds=1.0)
    assert seen.count("a") == 2 and seen.count("b") == 2  # b gets its share, not five passes of catch-up


def test_higher_priority_rows_join_first():
    s = Scheduler(max_batch=2)
    s.add(tickets("low", 4))
    s.schedule()  # two low rows run
    s.add([Ticket(10, "normal", "g", priority=1)] + [Ticket(20, "high", "g", priority=2)])
    s.update([0])
    _, admitted = s.schedule()
    assert [t.job_id for t in admitted] == ["high"]


def test_a_starved_low_priority_job_ages_up_and_runs():
    """Under a steady stream of normal jobs, a low one waiting unserved rises a level per aging_s."""
    now = [0.0]
    s = Scheduler(max_batch=1, aging_s=10, clock=lambda: now[0])
    s.add([Ticket(0, "low", "g", priority=0)])
    order = []
    for i in range(1, 12):
        s.add([Ticket(i, f"normal{i}", "g", priority=1)])  # a new normal job every pass
        batch, _ = s.schedule()
        order.append(batch[0].job_id)
        s.update([batch[0].row_id])
        now[0] += 6
    assert "low" in order and order[0] != "low"  # not first, but not starved either


def test_a_group_whose_pass_is_full_does_not_hold_back_rows_of_other_groups():
    # two 256² tiles sampling a whole chain filled the pixel cap of every pass: a digits row waited for them
    s = Scheduler(max_batch=64, max_pixels=2 * 256 * 256)
    s.add([Ticket(i, "denoise", "tiles", pixels=256 * 256) for i in range(4)])
    batch, _ = s.schedule()
    assert [t.row_id for t in batch] == [0, 1]  # its group's pass is full
    s.add([Ticket(100, "digits", "digits", pixels=28 * 28)])
    _, admitted = s.schedule()
    assert [t.row_id for t in admitted] == [100]
    passes = [s.schedule()[0] for _ in range(2)]
    assert {t.group for t in passes[0]} != {t.group for t in passes[1]}  # the groups take turns
    assert all(len(p) == 2 for p in passes if p[0].group == "tiles")  # a pass still within the cap


def test_the_running_set_holds_at_most_a_few_passes_worth_of_rows_across_groups():
    from app.engine.scheduler import RUNNING_PASSES

    s = Scheduler(max_batch=1)
    s.add([Ticket(i, f"job{i}", f"shape{i}") for i in range(RUNNING_PASSES + 2)])
    _, admitted = s.schedule()
    assert len(admitted) == RUNNING_PASSES  # one row per group, each its own pass, up to the bound
    s.add([Ticket(99, "late-high", "shape99", priority=2)])
    s.update([0])
    _, admitted = s.schedule()
    assert [t.job_id for t in admitted] == ["late-high"]  # a place freed goes by priority


def test_groups_share_the_device_by_the_priority_of_their_rows():
    # groups' caps are per pass, so a low row of another group joins beside a high group whose pass is full:
    # it gets a quarter of the high group's device time, not half of the device
    s = Scheduler(max_batch=1)
    s.add([Ticket(0, "high", "tiles", priority=2)] + [Ticket(1, "low", "digits", priority=0)])
    seen = []
    for _ in range(10):
        batch, _ = s.schedule()
        seen.append(batch[0].group)
        s.update([], seconds=1.0)
    assert seen.count("tiles") == 8 and seen.count("digits") == 2
